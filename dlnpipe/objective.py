"""The training loss of a *batch* of B networks as torch tensors, its gradient and its Hessian operator.

A batch holds the layers as tensors W_k of shape (B, out_k, in_k) and the row prefix c of shape
(B, 1, out_L) (c = pᵀ for residual nets, 1 otherwise). The networks are independent: the loss of the
batch is the sum of per-network losses, so its Hessian is block-diagonal and one Hessian-vector
product serves the whole batch.

For linear networks the loss depends on the data only through moments (PAPER.md §1):
    R(w) = R(w*) + (w − w*)ᵀ Σ (w − w*),
so a step costs O(L m²) per network whatever n is. The gradient is written out by hand:
with rows b_k = c W_L ⋯ W_{k+1} (b_L = c) and h_k = g W_1ᵀ ⋯ W_{k-1}ᵀ (h_1 = g = 2(w − w*)Σ),
    ∂R/∂W_k = b_kᵀ h_k   (an outer product),
which needs two row-vector recursions through the layers and no matrix-matrix product.
The GELU network needs the data at every step and uses autograd.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from dlnpipe.data import Dataset
from dlnpipe.networks import Weights


def resolve_dtype(dtype) -> torch.dtype:
    table = {"float32": torch.float32, "float64": torch.float64,
             torch.float32: torch.float32, torch.float64: torch.float64}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; expected float32 or float64")
    return table[dtype]


def resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; expected auto, cpu or cuda[:i]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but torch sees no CUDA device")
    return dev


def memory_budget(device, *, fraction: float = 0.5, cpu_bytes: float = 4e9) -> float:
    """Bytes one job may give to batched tensors: ``fraction`` of a CUDA device's free memory, or
    ``cpu_bytes`` on CPU. Training and Lanczos size their batches from it, so a cell fits its device."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return fraction * free
    return float(cpu_bytes)


@dataclass(frozen=True)
class Problem:
    """A dataset's moments (and, for GELU, its arrays) on a device, in the input space of the net.

    For residual networks of width m > d the inputs are zero-padded to m (the isometry E), so
    sigma is (m, m) with zeros outside the top-left (d, d) block; ``d`` is the unpadded dimension.

    One dataset for the whole batch, or (:meth:`stack`, linear nets) one per network: then sigma is
    (B, in, in), w_star (B, in) and loss_opt, yty, yty_test are (B,) tensors; every function below
    takes either form.
    """

    arch: str
    d: int
    in_dim: int
    sigma: torch.Tensor  # (in_dim, in_dim)
    w_star: torch.Tensor  # (in_dim,)
    loss_opt: float | torch.Tensor
    yty: float | torch.Tensor
    sigma_test: torch.Tensor  # (in_dim, in_dim)
    xty_test: torch.Tensor  # (in_dim,)
    yty_test: float | torch.Tensor
    X: torch.Tensor | None  # (n, d), GELU only
    y: torch.Tensor | None
    X_test: torch.Tensor | None
    y_test: torch.Tensor | None

    @classmethod
    def from_dataset(cls, data: Dataset, *, arch: str, in_dim: int, dtype, device) -> Problem:
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
            return torch.tensor(a, dtype=dtype, device=device) if arch == "gelu" else None

        return cls(arch=arch, d=d, in_dim=in_dim, sigma=pad_mat(data.sigma), w_star=pad_vec(data.w_star),
                   loss_opt=data.loss_opt, yty=data.yty, sigma_test=pad_mat(data.sigma_test),
                   xty_test=pad_vec(data.xty_test), yty_test=data.yty_test, X=arr(data.X), y=arr(data.y),
                   X_test=arr(data.X_test), y_test=arr(data.y_test))

    @classmethod
    def stack(cls, datasets: list[Dataset], *, arch: str, in_dim: int, dtype, device) -> Problem:
        """One dataset per network (linear nets): the moments stacked along the batch."""
        if arch == "gelu":
            raise ValueError("networks on different datasets are batched for linear nets only, not arch 'gelu'")
        if len({ds.d for ds in datasets}) != 1:
            raise ValueError(f"batched datasets must share d, got {sorted({ds.d for ds in datasets})}")
        dtype, device = resolve_dtype(dtype), resolve_device(device)
        unique = {id(ds): cls.from_dataset(ds, arch=arch, in_dim=in_dim, dtype=dtype, device=device)
                  for ds in datasets}
        each = [unique[id(ds)] for ds in datasets]

        def cat(name):
            return torch.stack([torch.as_tensor(getattr(p, name), dtype=dtype, device=device) for p in each])

        return cls(arch=arch, d=each[0].d, in_dim=in_dim, sigma=cat("sigma"), w_star=cat("w_star"),
                   loss_opt=cat("loss_opt"), yty=cat("yty"), sigma_test=cat("sigma_test"),
                   xty_test=cat("xty_test"), yty_test=cat("yty_test"), X=None, y=None, X_test=None, y_test=None)

    @property
    def batched(self) -> bool:
        return self.sigma.ndim == 3

    def rows(self, keep: torch.Tensor) -> Problem:
        """The problem of the networks selected by ``keep`` (a no-op for a shared dataset)."""
        if not self.batched:
            return self
        pick = {name: getattr(self, name)[keep] for name in ("sigma", "w_star", "loss_opt", "yty", "sigma_test",
                                                             "xty_test", "yty_test")}
        return replace(self, **pick)


def _vm(v: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Row vectors times matrices: (B, n) @ (n, n) or, batched, (B, n) @ (B, n, n) -> (B, n)."""
    return v @ M if M.ndim == 2 else torch.bmm(v[:, None, :], M)[:, 0]


def stack_weights(nets: list[Weights], *, dtype, device) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Stack B networks of one architecture into layer tensors (B, out, in) and the prefix c (B, 1, out_L)."""
    dtype, device = resolve_dtype(dtype), resolve_device(device)
    depth = nets[0].depth
    layers = [torch.tensor(np.stack([net.layers[k] for net in nets]), dtype=dtype, device=device)
              for k in range(depth)]
    return layers, prefix_rows(nets, layers[-1].shape[1], dtype=dtype, device=device)


def prefix_rows(nets: list[Weights], out_dim: int, *, dtype, device) -> torch.Tensor:
    if nets[0].arch == "residual":
        c = np.stack([net.p for net in nets])[:, None, :]
    else:
        c = np.ones((len(nets), 1, out_dim))
    return torch.tensor(c, dtype=resolve_dtype(dtype), device=resolve_device(device))


def suffix_rows(layers: list[torch.Tensor], c: torch.Tensor) -> list[torch.Tensor]:
    """Rows b_k = c W_L ⋯ W_{k+1} for k = 0..L (b_L = c); b_0 = c W_L ⋯ W_1 is w_prodᵀ. Shapes (B, 1, ·)."""
    rows = [c]
    for W in reversed(layers):
        rows.append(torch.bmm(rows[-1], W))
    return rows[::-1]


def regressor(layers: list[torch.Tensor], c: torch.Tensor) -> torch.Tensor:
    """w_prod for each network, shape (B, in_dim)."""
    row = c
    for W in reversed(layers):
        row = torch.bmm(row, W)
    return row[:, 0, :]


def excess_loss(w: torch.Tensor, prob: Problem) -> torch.Tensor:
    """(w − w*)ᵀ Σ (w − w*) = R(w) − R(w*) for w of shape (B, in_dim); accurate near the optimum."""
    e = w - prob.w_star
    return (_vm(e, prob.sigma) * e).sum(-1)


def test_loss(w: torch.Tensor, prob: Problem) -> torch.Tensor:
    """R_test(w) = wᵀ Σ_test w − 2 wᵀ X_testᵀy_test/n_test + y_testᵀy_test/n_test, shape (B,)."""
    return (_vm(w, prob.sigma_test) * w).sum(-1) - 2 * (w * prob.xty_test).sum(-1) + prob.yty_test


def distance(w: torch.Tensor, prob: Problem) -> torch.Tensor:
    """‖w_prod − w*‖² over the d data coordinates, shape (B,)."""
    return ((w - prob.w_star)[:, : prob.d] ** 2).sum(-1)


def gelu_outputs(layers: list[torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    """Outputs of B GELU networks on inputs X (n, d): shape (B, n)."""
    h = X.expand(layers[0].shape[0], *X.shape)  # (B, n, d)
    for W in layers[:-1]:
        h = F.gelu(torch.matmul(h, W.mT))
    return torch.matmul(h, layers[-1].mT)[..., 0]


def gelu_loss_and_grad(layers: list[torch.Tensor], prob: Problem) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Loss (B,) and hand-written gradients (B, out, in) of B GELU networks, in a batch-last layout.

    Activations are kept as (n, m, B) and every tiny per-network matrix product is one broadcast
    multiply and one sum over a (n, m, m, B) block, instead of B separate (n×m)(m×m) GEMMs. For the
    paper's m = 5 this costs 1.1–1.7× less than the GEMM path on a CPU, and training a GELU net is
    bound by the number of kernels per step (checked against autograd in the tests).
    """
    X, y = prob.X, prob.y
    n, d = X.shape
    B = layers[0].shape[0]
    Wt = [W.permute(1, 2, 0).contiguous() for W in layers]  # (out, in, B)
    z = (X @ Wt[0].permute(1, 0, 2).reshape(d, -1)).reshape(n, -1, B)  # first layer: one GEMM
    zs, hs = [z], [None]
    h = F.gelu(z)
    for W in Wt[1:-1]:
        hs.append(h)
        z = (h[:, None, :, :] * W[None]).sum(2)  # z[n, j, b] = Σ_i W[j, i, b] h[n, i, b]
        zs.append(z)
        h = F.gelu(z)
    r = (h * Wt[-1][0][None]).sum(1) - y[:, None]  # (n, B) residuals
    value = (r * r).mean(0)
    dout = (2.0 / n) * r
    grads = [None] * len(layers)
    grads[-1] = (dout[:, None, :] * h).sum(0)[None]
    dh = dout[:, None, :] * Wt[-1][0][None]
    for k in range(len(layers) - 2, -1, -1):
        dz = torch.ops.aten.gelu_backward(dh, zs[k])
        if k == 0:
            grads[0] = (X.T @ dz.reshape(n, -1)).reshape(d, -1, B).permute(1, 0, 2)
        else:
            grads[k] = (dz[:, :, None, :] * hs[k][:, None, :, :]).sum(0)  # Σ_n dz[n, j] h[n, i]
            dh = (dz[:, :, None, :] * Wt[k][None]).sum(1)  # Σ_j dz[n, j] W[j, i]
    return value, [G.permute(2, 0, 1) for G in grads]


def loss(layers: list[torch.Tensor], c: torch.Tensor, prob: Problem) -> torch.Tensor:
    """Per-network training loss R, shape (B,), as a differentiable expression (any architecture)."""
    if prob.arch == "gelu":
        return ((prob.y - gelu_outputs(layers, prob.X)) ** 2).mean(-1)
    return prob.loss_opt + excess_loss(regressor(layers, c), prob)


def gelu_test_loss(layers: list[torch.Tensor], prob: Problem) -> torch.Tensor:
    return ((prob.y_test - gelu_outputs(layers, prob.X_test)) ** 2).mean(-1)


def linear_state(layers: list[torch.Tensor], c: torch.Tensor, prob: Problem):
    """Forward pass of linear nets: (rows, w, g, excess).

    rows[k] = b_k (B, 1, out_k) for k = 0..L (rows[0] = w_prodᵀ), w (B, in_dim) the regressors,
    g = ∂R/∂w = 2 Σ (w − w*) (B, in_dim), excess = R − R* = (w − w*)ᵀΣ(w − w*) (B,).
    """
    rows = suffix_rows(layers, c)
    w = rows[0][:, 0, :]
    e = w - prob.w_star
    g = 2 * _vm(e, prob.sigma)
    excess = 0.5 * (g * e).sum(-1)
    return rows, w, g, excess


def linear_step_(layers: list[torch.Tensor], rows: list[torch.Tensor], g_scaled: torch.Tensor) -> None:
    """One GD step in place: W_k ← W_k − b_kᵀ h_k with h_1 = g_scaled = η ∂R/∂w (B, in_dim).

    h_{k+1} = h_k W_kᵀ is taken before W_k moves, so every layer sees the same (old) point.
    """
    h = g_scaled[:, None, :]
    for k, W in enumerate(layers):
        h_next = torch.bmm(h, W.mT) if k + 1 < len(layers) else None
        W.baddbmm_(rows[k + 1].mT, h, alpha=-1.0)
        h = h_next


def linear_grad(layers: list[torch.Tensor], c: torch.Tensor, prob: Problem) -> list[torch.Tensor]:
    """∂R/∂W_k = b_kᵀ h_k for every layer, as full (B, out_k, in_k) tensors (for checks and tools)."""
    return linear_grad_and_excess(layers, c, prob)[0]


def linear_grad_and_excess(layers: list[torch.Tensor], c: torch.Tensor, prob: Problem):
    """(∂R/∂W_k for every layer, R − R*) from one forward pass."""
    rows, _, g, excess = linear_state(layers, c, prob)
    h = g[:, None, :]
    grads = []
    for k, W in enumerate(layers):
        grads.append(torch.bmm(rows[k + 1].mT, h))
        if k + 1 < len(layers):
            h = torch.bmm(h, W.mT)
    return grads, excess


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per-network flat parameter vectors: list of (B, ...) -> (B, P)."""
    return torch.cat([t.reshape(t.shape[0], -1) for t in tensors], dim=1)


def unflatten(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, start = [], 0
    for t in like:
        size = t[0].numel()
        out.append(flat[:, start:start + size].reshape(flat.shape[0], *t.shape[1:]))
        start += size
    return out


class HessianOperator:
    """Block-diagonal Hessian of the batch loss as a matvec on (B, P) by double backward.

    The first-order graph is built once and reused by every product (``retain_graph``), so one
    product costs one extra backward pass.
    """

    def __init__(self, layers: list[torch.Tensor], c: torch.Tensor, prob: Problem):
        self.params = [W.detach().clone().requires_grad_(True) for W in layers]
        self.c = c
        self.prob = prob
        with torch.enable_grad():
            self.loss = loss(self.params, c, prob)
            self.grads = torch.autograd.grad(self.loss.sum(), self.params, create_graph=True)
        self.batch = layers[0].shape[0]
        self.size = sum(W[0].numel() for W in layers)
        self.calls = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for v of shape (B, P), each network's block applied to its own row."""
        self.calls += 1
        vs = unflatten(v.to(self.params[0].dtype), self.params)
        with torch.enable_grad():
            dot = sum((g * u).sum() for g, u in zip(self.grads, vs))
            hv = torch.autograd.grad(dot, self.params, retain_graph=True)
        return flatten(hv)
