"""Networks as batched tensors: B networks of one architecture stacked into layer tensors
(B, out, in) and the row prefix c (B, 1, out_L); flat parameter rows (B, P) and back."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dlnpipe.devices import resolve_device, resolve_dtype
from dlnpipe.lazy import torch
from dlnpipe.networks import Weights


def stack_weights(nets: list[Weights], *, dtype, device) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Stack B networks of one architecture into layer tensors (B, out, in) and the prefix c (B, 1, out_L)."""
    dtype, device = resolve_dtype(dtype), resolve_device(device)
    depth = nets[0].depth
    layers = [torch.tensor(np.stack([net.layers[k] for net in nets]), dtype=dtype, device=device)
              for k in range(depth)]
    c = torch.tensor(np.stack([net.prefix() for net in nets]), dtype=dtype, device=device)
    return layers, c


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-network flat parameter vectors: list of (B, ...) -> (B, P)."""
    return torch.cat([t.reshape(t.shape[0], -1) for t in tensors], dim=1)


def unflatten(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """(B, P) -> tensors shaped like ``like`` (after the batch axis); views of ``flat`` where possible."""
    out, start = [], 0
    for t in like:
        size = t[0].numel()
        out.append(flat[:, start:start + size].reshape(flat.shape[0], *t.shape[1:]))
        start += size
    return out


def balance_gaps(layers: Sequence[torch.Tensor]) -> torch.Tensor:
    """(b, L−1): ‖W_{k+1}ᵀW_{k+1} − W_k W_kᵀ‖_F for layer tensors (b, out, in), k = 1 … L−1 (gradient flow of a
    linear net conserves each matrix W_{k+1}ᵀW_{k+1} − W_k W_kᵀ, so each gap)."""
    if len(layers) < 2:
        return torch.zeros(layers[0].shape[0], 0, dtype=layers[0].dtype, device=layers[0].device)
    gaps = [torch.linalg.matrix_norm(W1.mT @ W1 - W0 @ W0.mT) for W0, W1 in zip(layers[:-1], layers[1:])]
    return torch.stack(gaps, dim=1)
