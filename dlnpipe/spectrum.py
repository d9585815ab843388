"""The Hessian beyond its top eigenvalue: its trace and its spectral density (docs/theory.md#estimators,
#the-hessian-at-a-minimizer).

* :func:`hessian_trace`, by one of three methods:
  ``exact``       Σ_i e_iᵀ H e_i by P batched Hessian-vector products (every network's diagonal at once);
  ``hutchinson``  the mean of zᵀHz over Rademacher probes z (each network's own, from its seed), with
                  its standard error: E[zᵀHz] = tr H, Var = 2(‖H‖_F² − Σ_i H_ii²);
  ``minimizer``   2 tr(Σ K), K = Σ_k ‖b_k‖² A_kᵀA_k: at a global minimizer of a linear network the
                  Hessian is 2JᵀΣJ with JJᵀ = K (the matrix of the exact sharpness formula, §3.6), so
                  this is its trace there, and only there.
* :func:`spectral_density`: stochastic Lanczos quadrature. From each unit Rademacher probe v, Lanczos
  (full re-orthogonalisation) gives nodes θ_j and weights τ_j (Σ_j τ_j = 1, Σ_j τ_j θ_j = vᵀHv); the
  density of H's eigenvalues is estimated by the average over probes of Σ_j τ_j δ(λ − θ_j), smoothed
  by :meth:`SpectralDensity.density`.

Every network gets its own probes (from its seed) and, through the block-diagonal Hessian operator,
its own Krylov spaces: a batch gives each network the result it gets alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dlnpipe._checks import check_choice, check_int
from dlnpipe.curvature import HessianBatch
from dlnpipe.data import Dataset
from dlnpipe.hessian import HessianOperator
from dlnpipe.lanczos import quadrature

TRACE_METHODS = ("exact", "hutchinson", "minimizer")


@dataclass(frozen=True)
class TraceResult:
    """tr H of B networks: ``value`` (B,), ``stderr`` (B,) (Hutchinson's; 0 for the exact methods, NaN
    where not computed), ``probes`` (Hutchinson) and ``hvps`` (Hessian-vector products per network).
    ``float(result)`` is the trace of a single network."""

    method: str
    value: np.ndarray
    stderr: np.ndarray
    probes: int = 0
    hvps: int = 0

    def __len__(self) -> int:
        return self.value.shape[0]

    def __float__(self) -> float:
        if len(self) != 1:
            raise TypeError(f"float() needs a single network, this result holds {len(self)}")
        return float(self.value[0])


@dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature of B networks' Hessians: ``nodes`` and ``weights`` (B, probes, steps),
    each probe's weights summing to 1."""

    nodes: np.ndarray
    weights: np.ndarray

    def density(self, grid, *, sigma: float) -> np.ndarray:
        """The spectral density on ``grid`` (G,), smoothed by a Gaussian of width ``sigma``: (B, G), each
        row integrating to 1 (the eigenvalues' distribution, not their count)."""
        grid = np.asarray(grid, dtype=float)
        z = (grid[None, None, None, :] - self.nodes[..., None]) / sigma  # (B, probes, steps, G)
        kernel = np.exp(-0.5 * z**2) / (sigma * np.sqrt(2 * np.pi))
        return (self.weights[..., None] * kernel).sum(2).mean(1)

    def moment(self, p: int = 1) -> np.ndarray:
        """The estimate of tr(H^p)/P, (B,): the mean over probes of Σ_j τ_j θ_j^p."""
        return (self.weights * self.nodes**p).sum(-1).mean(-1)


def rademacher(seeds, count: int, size: int, *, stream: int, seed: int = 0) -> np.ndarray:
    """``count`` ±1 vectors of ``size`` per network from its seed (and a stream and call seed): (B, count, size)."""
    return np.stack([np.random.default_rng([int(s), stream, seed]).integers(0, 2, size=(count, size)) * 2.0 - 1.0
                     for s in seeds])


def _quadratic_forms(batch: HessianBatch, dataset: Dataset, idx, vectors: np.ndarray) -> np.ndarray:
    """vᵀHv for every network in ``idx`` and each of its vectors (n, R, P) -> (n, R), R products at once."""
    n, R, _ = vectors.shape
    layers, c, prob = batch.tensors(dataset, idx, repeat=R)
    op = HessianOperator(batch.arch, layers, c, prob)
    v = torch.tensor(vectors.reshape(n * R, -1), dtype=torch.float64, device=batch.device)
    return (v * op.matvec(v)).sum(1).reshape(n, R).cpu().numpy()


def hessian_trace(dataset: Dataset, weights, *, method: str = "exact", probes: int = 100, seed: int = 0,
                  device=None, seeds=None, memory_budget: float | None = None) -> TraceResult:
    """tr H at ``weights`` (as :func:`dlnpipe.sharpness` takes them) by ``method`` (module docstring).

    Hutchinson's probes for network b come from (its seed, ``seed``): ``seeds`` as in sharpness()
    (default: the networks' own seeds; Hutchinson needs one or the other). Networks whose weights are not
    finite get NaN."""
    check_choice("method", method, TRACE_METHODS)
    probes = check_int("probes", probes, minimum=2)
    batch = HessianBatch.of(weights, seeds=seeds, device=device, memory_budget=memory_budget,
                            draws="Hutchinson probes" if method == "hutchinson" else None)
    arch, P, B = batch.arch, batch.size, len(batch.nets)
    if method == "minimizer" and not arch.linear:
        raise ValueError(f"method 'minimizer' holds for linear networks only, not arch {arch.name!r}")
    value, stderr = np.full(B, np.nan), np.full(B, np.nan)
    R = P if method == "exact" else probes  # vectors per network
    chunk = max(1, min(R, 256))  # products taken at once per network
    for idx in batch.batches(8.0 * P * chunk * 6):
        if method == "minimizer":
            value[idx], stderr[idx] = arch.minimizer_trace(dataset, [batch.nets[i] for i in idx]), 0.0
            continue
        if method == "exact":  # the unit vectors e_1 .. e_P
            vectors = np.broadcast_to(np.eye(P), (idx.size, P, P))
        else:
            vectors = rademacher(batch.seeds[idx], R, P, stream=2_000_003, seed=seed)
        forms = np.concatenate([_quadratic_forms(batch, dataset, idx, np.ascontiguousarray(vectors[:, i:i + chunk]))
                                for i in range(0, R, chunk)], axis=1)
        if method == "exact":
            value[idx], stderr[idx] = forms.sum(1), 0.0
        else:
            value[idx], stderr[idx] = forms.mean(1), forms.std(1, ddof=1) / np.sqrt(R)
    return TraceResult(method=method, value=value, stderr=stderr, probes=probes if method == "hutchinson" else 0,
                       hvps=0 if method == "minimizer" else R)


def spectral_density(dataset: Dataset, weights, *, probes: int = 4, steps: int = 40, seed: int = 0, device=None,
                     seeds=None, memory_budget: float | None = None) -> SpectralDensity:
    """Stochastic Lanczos quadrature (module docstring): ``probes`` unit Rademacher start vectors per network
    (from its seed and ``seed``), ``steps`` Lanczos iterations each (at most P). Networks whose weights are
    not finite get NaN."""
    probes = check_int("probes", probes, minimum=1)
    batch = HessianBatch.of(weights, seeds=seeds, device=device, memory_budget=memory_budget,
                            draws="density probes")
    P, B = batch.size, len(batch.nets)
    steps = min(check_int("steps", steps, minimum=1), P)
    nodes, wts = np.full((B, probes, steps), np.nan), np.full((B, probes, steps), np.nan)
    for idx in batch.batches(8.0 * P * probes * (steps + 10)):
        layers, c, prob = batch.tensors(dataset, idx, repeat=probes)
        op = HessianOperator(batch.arch, layers, c, prob)
        v0 = rademacher(batch.seeds[idx], probes, P, stream=3_000_017, seed=seed) / np.sqrt(P)
        # a restart (an invariant Krylov space) draws from a fixed stream: its nodes have zero weight
        generator = torch.Generator(device=batch.device).manual_seed(seed)
        theta, tau = quadrature(op, torch.tensor(v0.reshape(idx.size * probes, P), device=batch.device),
                                steps, generator=generator)
        nodes[idx] = theta.cpu().numpy().reshape(idx.size, probes, steps)
        wts[idx] = tau.cpu().numpy().reshape(idx.size, probes, steps)
    return SpectralDensity(nodes=nodes, weights=wts)
