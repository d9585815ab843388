"""The theoretical constants of docs/theory.md for a dataset and a depth.

* S_min = 2 L a ‖w*‖^{2−2/L}: no global minimizer is flatter (§3.1);
* η_c = 2 / S_min: GD with η > η_c cannot converge (§3.2);
* S_upper = 8 L Λ ‖w*‖^{2−2/L}: gradient flow from small init ends below it (§3.3), so
  S / S_min ≤ 4Λ/a ≤ 4κ;
* the balanced rank-one minimizer W_k = c u_k u_{k−1}ᵀ, c = ‖w*‖^{1/L}, u_0 = w*/‖w*‖, whose
  sharpness is 2‖w*‖^{2−2/L} λ_max(Σ + (L−1) Σ^{1/2} u_0 u_0ᵀ Σ^{1/2}) (§3.1, nearly tight);
* the Hessian's trace at global minimizers (derived here; §6.5 gives tr H = 2 tr(ΣK) there, with
  K = Σ_k ‖b_k‖² A_kᵀA_k). Each term ‖b_k‖² ‖A_k Σ^{1/2}‖_F² of tr(ΣK): the first is ‖b_1‖² tr Σ
  (A_1 = E, ‖c‖ = 1), and for k ≥ 2, w*ᵀ = b_{k−1} A_k gives ‖b_{k−1}‖ ‖A_kΣ^{1/2}‖_F ≥ ‖Σ^{1/2}w*‖, so the
  product of the L terms is at least tr Σ · (a‖w*‖²)^{L−1} and, by the AM–GM inequality,
      tr H ≥ T_min := 2 L ‖w*‖^{2−2/L} (tr Σ)^{1/L} a^{1−1/L}   (≥ S_min, since tr Σ ≥ a),
  with equality for a rank-one chain W_k = σ_k u_k u_{k−1}ᵀ, u_0 = w*/‖w*‖, σ_1² ∝ tr Σ, σ_k² ∝ a (k ≥ 2),
  Π σ_k = ‖w*‖ (:func:`trace_minimizer`). The balanced minimizer has tr H = 2‖w*‖^{2−2/L}(tr Σ + (L−1)a).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlnpipe import archs
from dlnpipe._checks import check_int
from dlnpipe.archs.residual import projection_vector
from dlnpipe.data import Dataset
from dlnpipe.networks import Weights


@dataclass(frozen=True)
class Bounds:
    depth: int
    a: float
    lam_max: float
    w_norm: float
    s_min: float  # 2 L a ‖w*‖^{2−2/L}
    s_upper: float  # 8 L Λ ‖w*‖^{2−2/L}
    eta_c: float  # 2 / S_min
    s_balanced: float  # exact sharpness of the balanced rank-one minimizer
    ratio_bound: float  # 4Λ/a, the small-init bound on S/S_min
    balanced: Weights  # that minimizer, the default (small) architecture with width d
    trace_min: float = float("nan")  # 2 L ‖w*‖^{2−2/L} (tr Σ)^{1/L} a^{1−1/L}: no global minimizer has a smaller tr H
    trace_balanced: float = float("nan")  # tr H of the balanced minimizer, 2‖w*‖^{2−2/L}(tr Σ + (L−1)a)

    def __getitem__(self, key: str):
        return getattr(self, key)


def balanced_sharpness(dataset: Dataset, depth: int) -> float:
    """2‖w*‖^{2−2/L} λ_max(Σ + (L−1) Σ^{1/2} u_0 u_0ᵀ Σ^{1/2}) (closed form)."""
    L = depth
    u0 = dataset.w_star / dataset.w_norm
    root = dataset.sigma_sqrt()
    v = root @ u0
    M = dataset.sigma + (L - 1) * np.outer(v, v)
    return float(2 * dataset.w_norm ** (2 - 2 / L) * np.linalg.eigvalsh((M + M.T) / 2)[-1])


def balanced_minimizer(dataset: Dataset, depth: int, *, arch=archs.DEFAULT, width: int | None = None,
                       seed: int = 0, p_seed: int = 0) -> Weights:
    """A balanced rank-one global minimizer of a linear architecture: W_k = c u_k u_{k−1}ᵀ with random
    unit u_1..u_{L−1}. With a projection p (residual nets) the last layer is c p u_{L−1}ᵀ, so that
    pᵀ W_L = c u_{L−1}ᵀ (p unit)."""
    width = dataset.d if width is None else width
    architecture = archs.get(arch)
    if not architecture.linear:
        raise ValueError(f"the balanced minimizer is a minimizer of linear networks, not arch {architecture.name!r}")
    depth, width, d = architecture.check(depth=depth, width=width, d=dataset.d)
    rng = np.random.default_rng(seed)
    cst = dataset.w_norm ** (1 / depth)
    u = [np.zeros(architecture.in_dim(width, d))]
    u[0][:d] = dataset.w_star / dataset.w_norm
    for _ in range(depth - 1):
        v = rng.standard_normal(width)
        u.append(v / np.linalg.norm(v))
    if architecture.has_projection:
        p = projection_vector(width, seed=p_seed)
        layers = [cst * np.outer(u[k + 1], u[k]) for k in range(depth - 1)]
        layers.append(cst * np.outer(p, u[depth - 1]))
        return Weights([*layers, p], arch=architecture)
    u.append(np.ones(1))
    return Weights([cst * np.outer(u[k + 1], u[k]) for k in range(depth)], arch=architecture)


def random_factorization(dataset: Dataset, depth: int, *, width: int | None = None, scale: float = 1.0,
                         seed: int = 0) -> Weights:
    """A random global minimizer of the default (small) architecture: random W_1..W_{L−1}, W_L = w*ᵀ A_L⁺
    (needs m ≥ d)."""
    width = dataset.d if width is None else width
    arch = archs.get(archs.DEFAULT)
    depth, width, d = arch.check(depth=depth, width=width, d=dataset.d)
    if depth > 1 and width < d:
        raise ValueError(f"a random factorisation needs width >= d, got width={width} with d={d}")
    rng = np.random.default_rng(seed)
    dims = [d] + [width] * (depth - 1)
    layers = [scale * rng.standard_normal((dims[k + 1], dims[k])) for k in range(depth - 1)]
    A = np.eye(d)
    for W in layers:
        A = W @ A
    last = dataset.w_star[None, :] @ np.linalg.pinv(A)
    return Weights([*layers, last], arch=arch, seed=seed)


def trace_minimizer(dataset: Dataset, depth: int) -> Weights:
    """A global minimizer of the default (small) architecture, width d, with the smallest Hessian trace
    T_min: the rank-one chain of the module docstring (u_1..u_{L−1} the canonical basis vectors)."""
    L = check_int("depth", depth, minimum=1)
    d, w_norm = dataset.d, dataset.w_norm
    costs = np.array([np.trace(dataset.sigma)] + [dataset.a] * (L - 1))  # c_k: tr Σ, then a
    sigma2 = costs * (w_norm**2 / np.prod(costs)) ** (1 / L)  # σ_k² = λ c_k with Π σ_k² = ‖w*‖²
    u = [dataset.w_star / w_norm] + [np.eye(d)[k % d] for k in range(L - 1)] + [np.ones(1)]
    return Weights([np.sqrt(sigma2[k]) * np.outer(u[k + 1], u[k]) for k in range(L)], arch=archs.DEFAULT)


def bounds(dataset: Dataset, depth: int) -> Bounds:
    """S_min, S_upper, η_c, the balanced minimizer and the trace bounds for ``dataset`` at depth L (docs/theory.md)."""
    L = check_int("depth", depth, minimum=1)
    power = dataset.w_norm ** (2 - 2 / L)
    s_min = 2 * L * dataset.a * power
    tr = float(np.trace(dataset.sigma))
    return Bounds(depth=L, a=dataset.a, lam_max=dataset.lam_max, w_norm=dataset.w_norm, s_min=s_min,
                  s_upper=8 * L * dataset.lam_max * power, eta_c=2 / s_min,
                  s_balanced=balanced_sharpness(dataset, L), ratio_bound=4 * dataset.lam_max / dataset.a,
                  balanced=balanced_minimizer(dataset, L),
                  trace_min=2 * L * power * tr ** (1 / L) * dataset.a ** (1 - 1 / L),
                  trace_balanced=2 * power * (tr + (L - 1) * dataset.a))
