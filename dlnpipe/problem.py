"""A regression problem on a device, as the batched losses need it.

For linear networks the loss depends on the data only through moments (docs/theory.md#conventions):
    R(w) = R(w*) + (w − w*)ᵀ Σ (w − w*),
so the problem holds Σ, w*, R* = R(w*) and yᵀy/n (and the test set's Σ_test, X_testᵀy_test/n,
y_testᵀy_test/n); networks that need the data (``with_data``) also get X, y, X_test, y_test.

For residual networks of width m > d the inputs are zero-padded to ``in_dim`` = m (the isometry E),
so sigma is (m, m) with zeros outside the top-left (d, d) block; ``d`` is the unpadded dimension.

One dataset for the whole batch, or (:meth:`Problem.stack`, moments only) one per network: then
sigma is (B, in, in), w_star (B, in) and loss_opt, yty, yty_test are (B,) tensors; every loss
function takes either form.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from dlnpipe.data import Dataset
from dlnpipe.devices import resolve_device, resolve_dtype
from dlnpipe.lazy import torch

_PER_NETWORK = ("sigma", "w_star", "loss_opt", "yty", "sigma_test", "xty_test", "yty_test")


@dataclass(frozen=True)
class Problem:
    d: int
    in_dim: int
    sigma: torch.Tensor  # (in_dim, in_dim) or (B, in_dim, in_dim)
    w_star: torch.Tensor  # (in_dim,) or (B, in_dim)
    loss_opt: float | torch.Tensor
    yty: float | torch.Tensor
    sigma_test: torch.Tensor  # (in_dim, in_dim) or (B, in_dim, in_dim)
    xty_test: torch.Tensor  # (in_dim,) or (B, in_dim)
    yty_test: float | torch.Tensor
    X: torch.Tensor | None = None  # (n, d), with_data only
    y: torch.Tensor | None = None  # (n,)
    X_test: torch.Tensor | None = None  # (n_test, d)
    y_test: torch.Tensor | None = None  # (n_test,)

    @classmethod
    def from_dataset(cls, data: Dataset, *, in_dim: int, dtype, device, with_data: bool = False) -> Problem:
        dtype, device = resolve_dtype(dtype), resolve_device(device)
        d = data.d

        def pad_vec(v):
            out = np.zeros(in_dim)
            out[:d] = v
            return torch.tensor(out, dtype=dtype, device=device)

        def pad_mat(M):
            out = np.zeros((in_dim, in_dim))
            out[:d, :d] = M
            return torch.tensor(out, dtype=dtype, device=device)

        def arr(a):
            return torch.tensor(a, dtype=dtype, device=device) if with_data else None

        return cls(d=d, in_dim=in_dim, sigma=pad_mat(data.sigma), w_star=pad_vec(data.w_star),
                   loss_opt=data.loss_opt, yty=data.yty, sigma_test=pad_mat(data.sigma_test),
                   xty_test=pad_vec(data.xty_test), yty_test=data.yty_test, X=arr(data.X), y=arr(data.y),
                   X_test=arr(data.X_test), y_test=arr(data.y_test))

    @classmethod
    def stack(cls, datasets: list[Dataset], *, in_dim: int, dtype, device) -> Problem:
        """One dataset per network (moments only): stacked along the batch."""
        if len({ds.d for ds in datasets}) != 1:
            raise ValueError(f"batched datasets must share d, got {sorted({ds.d for ds in datasets})}")
        dtype, device = resolve_dtype(dtype), resolve_device(device)
        unique = {id(ds): cls.from_dataset(ds, in_dim=in_dim, dtype=dtype, device=device) for ds in datasets}
        each = [unique[id(ds)] for ds in datasets]

        def cat(name):
            return torch.stack([torch.as_tensor(getattr(p, name), dtype=dtype, device=device) for p in each])

        return cls(d=each[0].d, in_dim=in_dim, **{name: cat(name) for name in _PER_NETWORK})

    @property
    def batched(self) -> bool:
        return self.sigma.ndim == 3

    def rows(self, keep: torch.Tensor) -> Problem:
        """The problem of the networks selected by ``keep`` (a no-op for a shared dataset)."""
        if not self.batched:
            return self
        return replace(self, **{name: getattr(self, name)[keep] for name in _PER_NETWORK})


def distance(w: torch.Tensor, prob: Problem) -> torch.Tensor:
    """‖w_prod − w*‖² over the d data coordinates, shape (B,)."""
    return ((w - prob.w_star)[:, : prob.d] ** 2).sum(-1)
