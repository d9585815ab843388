"""The Hessian of a batch's training loss, kept apart from the eigensolvers that use it.

The networks of a batch are independent: the loss of the batch is the sum of per-network losses,
so its Hessian is block-diagonal and one Hessian-vector product serves the whole batch.
"""

from __future__ import annotations

import functools
import operator

import torch

from dlnpipe.archs import Architecture
from dlnpipe.problem import Problem
from dlnpipe.tensors import flatten, unflatten


class HessianOperator:
    """Block-diagonal Hessian of the batch loss as a matvec on (B, P), by double backward.

    The first-order graph is built once and reused by every product (``retain_graph``), so one
    product costs one extra backward pass.
    """

    def __init__(self, arch: Architecture, layers: list[torch.Tensor], c: torch.Tensor, prob: Problem):
        self.params = [W.detach().clone().requires_grad_(True) for W in layers]
        with torch.enable_grad():
            self.loss = arch.loss(self.params, c, prob)
            self.grads = torch.autograd.grad(self.loss.sum(), self.params, create_graph=True)
        self.batch = layers[0].shape[0]
        self.size = sum(W[0].numel() for W in layers)
        self.calls = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for v of shape (B, P), each network's block applied to its own row."""
        self.calls += 1
        vs = unflatten(v.to(self.params[0].dtype), self.params)
        with torch.enable_grad():
            dot = functools.reduce(operator.add, [(g * u).sum() for g, u in zip(self.grads, vs)])
            hv = torch.autograd.grad(dot, self.params, retain_graph=True)
        return flatten(hv)


def dense_hessians(arch: Architecture, layers: list[torch.Tensor], c: torch.Tensor, prob: Problem) -> torch.Tensor:
    """Full Hessians (B, P, P) by forward-over-reverse ``torch.func.hessian`` (not the Lanczos path)."""
    flat = flatten(layers)

    def one(theta, c_row):
        return arch.loss(unflatten(theta[None], layers), c_row[None], prob)[0]

    return torch.stack([torch.func.hessian(one)(flat[b], c[b]) for b in range(flat.shape[0])])
