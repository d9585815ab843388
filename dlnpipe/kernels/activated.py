"""Gradient descent on small-init nonlinear networks by the compiled kernel ``activated.c``.

The batch's layers (b, out, in) are dealt into chunks of LANES networks (one 64-byte SIMD register:
16 in float32, 8 in float64) and laid out lane-last, the kernel runs ``count`` full GD steps, and the
layers, ``alive`` and ``alive_steps`` are written back in place. Networks never share a lane, so a
network's result does not depend on the batch it is in.
"""

from __future__ import annotations

import ctypes

import torch

from dlnpipe import kernels

_ARGS = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long] + [ctypes.c_void_p] * 8


def library(activation: int, dtype: torch.dtype, width: int, d: int):
    """The kernel for this activation (1 GELU, 2 ReLU), dtype and shape, or None."""
    double = dtype == torch.float64
    lib = kernels.load("activated", libs=("-lmvec", "-lm") if double and activation == 1 else ("-lm",),
                       REAL="double" if double else "float", REAL_IS_DOUBLE=int(double), M=width, D=d,
                       ACT=activation)
    if lib is not None and lib.dlnpipe_steps.argtypes is None:
        lib.dlnpipe_steps.argtypes, lib.dlnpipe_steps.restype = _ARGS, ctypes.c_int
        lib.dlnpipe_activation.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 3
    return lib


def lanes(dtype: torch.dtype) -> int:
    return 64 // dtype.itemsize


def _pad(x: torch.Tensor, size: int, fill) -> torch.Tensor:
    out = torch.full((size, *x.shape[1:]), fill, dtype=x.dtype)
    out[: x.shape[0]] = x
    return out


def pack(layers: list[torch.Tensor], nchunks: int, width: int) -> torch.Tensor:
    """(b, out, in) layers -> one (nchunks, P·width) buffer, each chunk's layers lane-last."""
    parts = []
    for W in layers:
        Wp = _pad(W, nchunks * width, 0.0).reshape(nchunks, width, *W.shape[1:])
        parts.append(Wp.permute(0, 2, 3, 1).reshape(nchunks, -1))
    return torch.cat(parts, dim=1).contiguous()


def unpack_(buffer: torch.Tensor, layers: list[torch.Tensor], width: int) -> None:
    """Write a packed buffer back into the (b, out, in) layers."""
    start, nchunks = 0, buffer.shape[0]
    for W in layers:
        size = W[0].numel() * width
        block = buffer[:, start:start + size].reshape(nchunks, *W.shape[1:], width).permute(0, 3, 1, 2)
        W.copy_(block.reshape(-1, *W.shape[1:])[: W.shape[0]])
        start += size


def gd_steps(lib, layers, X, y, *, lr, alive, alive_steps, cap, count: int) -> torch.Tensor:
    """``count`` GD steps of the batch in place; returns the loss before the last step, (b,)."""
    b, dtype, width = layers[0].shape[0], layers[0].dtype, lanes(layers[0].dtype)
    nchunks = -(-b // width)
    size = nchunks * width
    buffer = pack(layers, nchunks, width)
    lr_p = _pad(lr.to(dtype), size, 0.0)
    cap_p = _pad(cap.to(dtype), size, float("inf"))
    alive_p = _pad(alive.to(torch.uint8), size, 0)
    steps_p = _pad(alive_steps, size, 0)
    value = torch.empty(size, dtype=dtype)
    X, y = X.to(dtype).contiguous(), y.to(dtype).contiguous()
    ptr = lambda t: t.data_ptr()  # noqa: E731
    rc = lib.dlnpipe_steps(nchunks, len(layers), X.shape[0], count, ptr(buffer), ptr(X), ptr(y), ptr(lr_p),
                           ptr(cap_p), ptr(alive_p), ptr(steps_p), ptr(value))
    if rc != 0:
        raise MemoryError("the activated kernel could not allocate its work space")
    unpack_(buffer, layers, width)
    alive.copy_(alive_p[:b].bool())
    alive_steps.copy_(steps_p[:b])
    return value[:b]
