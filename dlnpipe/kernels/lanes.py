"""The lane-last layout of the compiled kernels: a batch of networks dealt into chunks of LANES (one SIMD
register of the CPU the kernel is built for: with AVX2, 8 networks in float32 and 4 in float64; with
AVX-512 16 and 8), each chunk's arrays stored with the network index last. A kernel says its own LANES
(``dlnpipe_lanes()``, :func:`lanes`). Padding networks (to fill the last chunk) are zeros and never move."""

from __future__ import annotations

import torch


def lanes(lib) -> int:
    """The networks per chunk of a loaded kernel."""
    return int(lib.dlnpipe_lanes())


def chunks(batch: int, width: int) -> int:
    return -(-batch // width)


def pad(x: torch.Tensor, size: int, fill) -> torch.Tensor:
    """``x`` (b, ...) padded with ``fill`` to ``size`` rows (a new, contiguous tensor)."""
    out = torch.full((size, *x.shape[1:]), fill, dtype=x.dtype)
    out[: x.shape[0]] = x
    return out


def pack(tensors: list[torch.Tensor], nchunks: int, width: int) -> torch.Tensor:
    """Per-network tensors (b, ...) -> one (nchunks, Σ size·width) buffer, each chunk's tensors lane-last."""
    parts = []
    for T in tensors:
        Tp = pad(T, nchunks * width, 0.0).reshape(nchunks, width, -1)
        parts.append(Tp.permute(0, 2, 1).reshape(nchunks, -1))
    return torch.cat(parts, dim=1).contiguous()


def unpack_(buffer: torch.Tensor, tensors: list[torch.Tensor], width: int) -> None:
    """Write a packed buffer back into the per-network tensors (b, ...)."""
    start, nchunks = 0, buffer.shape[0]
    for T in tensors:
        size = T[0].numel() * width
        block = buffer[:, start:start + size].reshape(nchunks, -1, width).permute(0, 2, 1)
        T.copy_(block.reshape(-1, *T.shape[1:])[: T.shape[0]])
        start += size


def ptr(t: torch.Tensor) -> int:
    """The address of a contiguous CPU tensor's data, for ctypes."""
    assert t.is_contiguous() and t.device.type == "cpu"
    return t.data_ptr()
