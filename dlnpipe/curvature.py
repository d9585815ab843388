"""Sharpness S(W) = λ_max(∇²R(W)), the largest *algebraic* Hessian eigenvalue (docs/theory.md#conventions,
#the-hessian-at-a-minimizer).

Methods:

* ``lanczos``: top-k by batched Lanczos on Hessian-vector products (double backward), with the
  residual certificate ‖Hv − λv‖ of each Ritz pair. Valid anywhere, any architecture.
* ``exact``: the d×d formula S = 2 λ_max(Σ^{1/2} K Σ^{1/2}), K = Σ_k ‖b_k‖² A_kᵀA_k, valid only at
  global minimizers of a *linear* network (there Xᵀr = 0 and the Hessian is its Gauss–Newton part).
* ``dense``: the full Hessian by ``torch.func.hessian`` and ``eigvalsh``; small networks only.
* ``power``: the authors' 20 power iterations (largest *magnitude* eigenvalue), for comparison.

All computations run in float64. :func:`sharpness` accepts one network (a :class:`Weights`), a list
of them or a :class:`~dlnpipe.result.TrainResult` (all its networks at once); :func:`top_eigenvalues`
works on a live batch of tensors (training records sharpness trajectories with it, on the device).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dlnpipe._checks import check_choice, check_int
from dlnpipe.data import Dataset
from dlnpipe.devices import memory_budget as default_budget
from dlnpipe.devices import resolve_device
from dlnpipe.hessian import HessianOperator, dense_hessians
from dlnpipe.lanczos import EigenResult, Negated, Preconditioned, lanczos, power_iteration
from dlnpipe.networks import Weights
from dlnpipe.problem import Problem
from dlnpipe.result import TrainResult
from dlnpipe.tensors import stack_weights

METHODS = ("lanczos", "exact", "dense", "power")
DENSE_MAX_PARAMS = 4000  # a (P, P) float64 Hessian of 4000 parameters is 128 MB


@dataclass(frozen=True)
class SharpnessResult:
    """Top-k Hessian eigenvalues of B networks.

    eigenvalues: (B, k), decreasing (NaN where not computed, e.g. diverged networks).
    residuals: (B, k) certificate ‖Hv − λv‖ (lanczos, power), NaN for exact and dense.
    converged: (B,) whether the eigensolver met its stopping test (lanczos: tol reached, not max_iter;
    exact and dense: True; power: False, it has none; False where not computed).
    ``float(result)`` is the sharpness of a single network; ``result.values`` the (B,) sharpness.
    """

    method: str
    eigenvalues: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    hvps: int = 0

    @property
    def values(self) -> np.ndarray:
        return self.eigenvalues[:, 0]

    @property
    def topk(self) -> np.ndarray:
        return self.eigenvalues

    def __len__(self) -> int:
        return self.eigenvalues.shape[0]

    def __float__(self) -> float:
        if len(self) != 1:
            raise TypeError(f"float() needs a single network, this result holds {len(self)}")
        return float(self.eigenvalues[0, 0])


def _as_batch(weights) -> list[Weights]:
    if isinstance(weights, TrainResult):
        return weights.networks()
    if isinstance(weights, Weights):
        return [weights]
    if isinstance(weights, (list, tuple)) and weights and all(isinstance(w, Weights) for w in weights):
        return list(weights)
    if isinstance(weights, (list, tuple)) and weights and all(isinstance(w, np.ndarray) for w in weights):
        raise ValueError("weights is a bare list of arrays, which names no architecture: wrap it as "
                         "dlnpipe.Weights(arrays, arch=...)")
    raise ValueError(f"weights must be Weights, a list of them or a TrainResult, got {type(weights).__name__}")


@dataclass(frozen=True)
class HessianBatch:
    """What every Hessian measurement takes: one or more networks of one architecture (``weights`` as
    :func:`sharpness` takes them), each with a seed for its random vectors, measured in float64 on a
    device in batches that fit a memory budget."""

    nets: list[Weights]
    seeds: np.ndarray
    device: torch.device
    budget: float

    @classmethod
    def of(cls, weights, *, seeds=None, device=None, memory_budget: float | None = None,
           draws: str | None = None) -> HessianBatch:
        """``draws``: what the measurement draws at random from each network's seed (e.g. "Lanczos start
        vectors"), None when it draws nothing; the seeds are then ``seeds``, else the networks' own
        (:attr:`Weights.seed`), and a network with neither is an error naming it."""
        nets = _as_batch(weights)
        if seeds is not None:
            seeds = np.atleast_1d(np.asarray(seeds, dtype=np.int64))
            if seeds.shape != (len(nets),):
                raise ValueError(f"seeds must have one entry per network ({len(nets)}), got shape {seeds.shape}")
        elif draws is None:
            seeds = np.zeros(len(nets), dtype=np.int64)  # nothing is drawn: the seeds are never read
        else:
            missing = [i for i, net in enumerate(nets) if net.seed is None]
            if missing:
                raise ValueError(f"the {draws} are drawn from each network's seed, and network {missing[0]} has "
                                 "none: pass seeds=... (one per network) or weights that carry their seed "
                                 "(init_network, a TrainResult)")
            seeds = np.array([net.seed for net in nets], dtype=np.int64)
        device = resolve_device(device if device is not None else "cpu")
        budget = default_budget(device) if memory_budget is None else memory_budget
        return cls(nets=nets, seeds=seeds, device=device, budget=float(budget))

    @property
    def arch(self):
        return self.nets[0].architecture

    @property
    def size(self) -> int:
        """Parameters per network, P."""
        return sum(W.size for W in self.nets[0].layers)

    def batches(self, per_network_bytes: float):
        """Index arrays of the networks with finite weights, in batches that fit the budget."""
        todo = np.flatnonzero([all(np.isfinite(W).all() for W in net) for net in self.nets])
        step = max(1, int(self.budget // max(per_network_bytes, 1.0)))
        return (todo[i:i + step] for i in range(0, todo.size, step))

    def tensors(self, dataset: Dataset, idx: np.ndarray, *, repeat: int = 1):
        """(layers, c, prob) of the networks ``idx`` in float64, each network ``repeat`` times in a row
        (so that one Hessian-vector product takes several vectors per network)."""
        layers, c = stack_weights([self.nets[i] for i in idx], dtype="float64", device=self.device)
        if repeat > 1:
            layers, c = [W.repeat_interleave(repeat, 0) for W in layers], c.repeat_interleave(repeat, 0)
        prob = self.arch.problem([dataset], in_dim=layers[0].shape[2], dtype="float64", device=self.device)
        return layers, c, prob


def start_vectors(seeds, size: int, *, device) -> torch.Tensor:
    """One N(0, I) start vector per network from its own seed: results do not depend on batching."""
    v = np.stack([np.random.default_rng([int(s), 1_000_003]).standard_normal(size) for s in seeds])
    return torch.tensor(v, dtype=torch.float64, device=device)


def networks_per_batch(size: int, k: int, budget: float) -> int:
    """How many networks of ``size`` parameters fit a Lanczos basis (about 100 float64 vectors each)."""
    return max(1, int(budget // lanczos_bytes(size, k)))


def lanczos_bytes(size: int, k: int) -> int:
    """Bytes of one network's Lanczos basis and work vectors (float64)."""
    return 8 * size * (min(size, 100) + 8 * k + 10)


def top_eigenvalues(arch, layers, c, prob: Problem, v0: torch.Tensor, *, k: int = 1, tol: float = 1e-10,
                    max_iter: int | None = None, method: str = "lanczos",
                    precond: torch.Tensor | None = None) -> EigenResult:
    """Top-k Hessian eigenvalues of a batch given as float64 tensors, from start vectors v0 (B, P), with
    their residuals, products and converged mask. With ``precond`` (B, P), the positive diagonal of a
    preconditioner P: those of P^{-1/2} H P^{-1/2} (the spectrum of P⁻¹H)."""
    op = HessianOperator(arch, layers, c, prob)
    if k > op.size:
        raise ValueError(f"k={k} exceeds the number of parameters ({op.size})")
    target = op if precond is None else Preconditioned(op, precond.to(v0.dtype))
    return power_iteration(target, v0) if method == "power" else lanczos(target, v0, k=k, tol=tol,
                                                                          max_iter=max_iter)


def sharpness(dataset: Dataset, weights, *, method: str = "lanczos", k: int = 1, tol: float = 1e-10,
              max_iter: int | None = None, device=None, seeds=None,
              dense_max_params: int = DENSE_MAX_PARAMS, memory_budget: float | None = None,
              precond: np.ndarray | None = None) -> SharpnessResult:
    """Top-k Hessian eigenvalues of the training loss at ``weights`` (see the module docstring).

    seeds: per-network seeds for the random start vectors (default: the networks' own, :attr:`Weights.seed`;
    lanczos and power need one or the other).
    Networks whose weights are not finite get NaN. Networks are processed in batches whose Lanczos
    basis (about 100 float64 vectors per network) fits in ``memory_budget`` bytes (default: half the
    free memory of a CUDA device, 4 GB on CPU). ``precond`` (B, P): a positive diagonal preconditioner
    per network (Adam's √v̂ + ε); the eigenvalues are then those of P⁻¹H (Lanczos and power only).
    """
    check_choice("method", method, METHODS)
    k = check_int("k", k, minimum=1)
    batch = HessianBatch.of(weights, seeds=seeds, device=device, memory_budget=memory_budget,
                            draws=f"{method} start vectors" if method in ("lanczos", "power") else None)
    arch, size = batch.arch, batch.size
    if precond is not None and method not in ("lanczos", "power"):
        raise ValueError(f"a preconditioner needs method 'lanczos' or 'power', not {method!r}")
    if method == "exact" and not arch.linear:
        raise ValueError(f"method 'exact' holds for linear networks only, not arch {arch.name!r}")
    eig, res = np.full((len(batch.nets), k), np.nan), np.full((len(batch.nets), k), np.nan)
    converged = np.zeros(len(batch.nets), dtype=bool)
    hvps = 0
    for idx in batch.batches(lanczos_bytes(size, k)):
        if method == "exact":
            e = arch.exact_topk(dataset, [batch.nets[i] for i in idx], k=k)
            converged[idx] = True
        else:
            layers, c, prob = batch.tensors(dataset, idx)
            if method == "dense":
                e = dense_topk(arch, layers, c, prob, k=k, max_params=dense_max_params)
                converged[idx] = True
            else:
                v0 = start_vectors(batch.seeds[idx], size, device=batch.device)
                P = None if precond is None else torch.as_tensor(precond[idx], dtype=torch.float64, device=batch.device)
                out = top_eigenvalues(arch, layers, c, prob, v0, k=k, tol=tol, max_iter=max_iter, method=method,
                                      precond=P)
                e, res[idx, : out.residuals.shape[1]] = out.eigenvalues, out.residuals
                converged[idx], hvps = out.converged, max(hvps, out.iterations)
        eig[idx, : e.shape[1]] = e
    return SharpnessResult(method=method, eigenvalues=eig, residuals=res, converged=converged, hvps=hvps)


def smallest_eigenvalue(dataset: Dataset, weights, *, tol: float = 1e-10, max_iter: int | None = None,
                        device=None, seeds=None, memory_budget: float | None = None) -> SharpnessResult:
    """λ_min(∇²R(W)), the smallest *algebraic* Hessian eigenvalue of each network, by Lanczos on −H with the
    certificate ‖Hv − λv‖ (tol relative to the largest |Ritz value| of −H, i.e. to the spectrum's scale, since
    λ_min sits at 0 or at the rounding floor at a minimizer). Clearly negative away from minima: a saddle's
    escape direction. ``eigenvalues`` (B, 1); the other arguments as for :func:`sharpness`."""
    batch = HessianBatch.of(weights, seeds=seeds, device=device, memory_budget=memory_budget,
                            draws="Lanczos start vectors")
    eig, res = np.full((len(batch.nets), 1), np.nan), np.full((len(batch.nets), 1), np.nan)
    converged = np.zeros(len(batch.nets), dtype=bool)
    hvps = 0
    for idx in batch.batches(lanczos_bytes(batch.size, 1)):
        layers, c, prob = batch.tensors(dataset, idx)
        v0 = start_vectors(batch.seeds[idx], batch.size, device=batch.device)
        out = lanczos(Negated(HessianOperator(batch.arch, layers, c, prob)), v0, k=1, tol=tol, max_iter=max_iter)
        eig[idx], res[idx] = -out.eigenvalues, out.residuals
        converged[idx], hvps = out.converged, max(hvps, out.iterations)
    return SharpnessResult(method="lanczos", eigenvalues=eig, residuals=res, converged=converged, hvps=hvps)


def dense_topk(arch, layers, c, prob: Problem, *, k: int, max_params: int = DENSE_MAX_PARAMS) -> np.ndarray:
    size = sum(W[0].numel() for W in layers)
    if size > max_params:
        raise ValueError(f"method 'dense' builds the full Hessian and is for small networks: "
                         f"{size} parameters > dense_max_params={max_params}; use method='lanczos'")
    H = dense_hessians(arch, layers, c, prob)
    H = (H + H.mT) / 2
    return torch.flip(torch.linalg.eigvalsh(H)[:, -k:], dims=[1]).cpu().numpy()


def exact_topk(dataset: Dataset, nets: list[Weights], *, k: int = 1) -> np.ndarray:
    """Top-k of 2 Σ^{1/2} K Σ^{1/2} (docs/theory.md#the-hessian-at-a-minimizer) for each network; exact at global
    minimizers of linear nets."""
    arch = nets[0].architecture
    if not arch.linear:
        raise ValueError(f"method 'exact' holds for linear networks only, not arch {arch.name!r}")
    return arch.exact_topk(dataset, nets, k=k)
