"""The edge of stability, measured (docs/theory.md#the-edge-of-stability-measured): what a GD run's sharpness
trajectory did near 2/η, the balancing gaps gradient flow conserves, and what a network that did not converge is
stuck on.

* :func:`edge_of_stability`: onset, time above 2/η, progressive sharpening and the mean ηS after onset, from
  sampled sharpness trajectories.
* :func:`balancing_gaps`: G_k = ‖W_{k+1}ᵀW_{k+1} − W_k W_kᵀ‖_F, k = 1 … L−1 (constant under the flow of a
  linear net; GD moves them by O(η²) per step).
* :func:`failure_kinds`: a network that neither converged nor diverged is *unstable* (ηS > 2: it cannot settle
  where it is), stuck near a *saddle* (λ_min clearly negative and a gradient small for its excess loss) or
  *slow* (neither: still descending when its steps ran out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlnpipe.status import FailureKind, Status

ONSET_MARGIN = 0.01  # onset: the first sample with ηS ≥ 2(1 − ONSET_MARGIN)


@dataclass(frozen=True)
class EdgeOfStability:
    """Per network (B,): ``onset`` the step of the first sample with ηS ≥ 2(1 − margin) (−1: never);
    ``above`` the fraction of the samples after onset with ηS > 2; ``sharpening`` the least-squares slope of S
    per step over the samples before onset (all samples without onset; NaN with fewer than two);
    ``mean_after`` the mean ηS over the samples after onset. NaN where there is no sample to take it over."""

    onset: np.ndarray
    above: np.ndarray
    sharpening: np.ndarray
    mean_after: np.ndarray


def edge_of_stability(sharpness: np.ndarray, record_steps: np.ndarray, lr, *,
                      margin: float = ONSET_MARGIN) -> EdgeOfStability:
    """The EoS measurements of B sharpness trajectories ``sharpness`` (B, S) sampled at ``record_steps`` (S,),
    each network with its learning rate ``lr`` (scalar or (B,)); NaN samples (a network's run ended, or it
    diverged) are not samples."""
    S = np.atleast_2d(np.asarray(sharpness, dtype=np.float64))
    steps = np.asarray(record_steps, dtype=np.float64)
    if S.shape[1] != steps.size:
        raise ValueError(f"sharpness has {S.shape[1]} samples per network, record_steps {steps.size}")
    B = S.shape[0]
    eta = np.broadcast_to(np.asarray(lr, dtype=np.float64), (B,))
    onset = np.full(B, -1, dtype=np.int64)
    above, sharpening, mean_after = np.full(B, np.nan), np.full(B, np.nan), np.full(B, np.nan)
    for b in range(B):
        ok = np.isfinite(S[b])
        s, t, x = S[b, ok], steps[ok], eta[b] * S[b, ok]
        hit = np.flatnonzero(x >= 2 * (1 - margin))
        before = slice(None) if hit.size == 0 else slice(0, hit[0])
        if t[before].size >= 2:
            sharpening[b] = np.polyfit(t[before], s[before], 1)[0]
        if hit.size:
            onset[b] = int(t[hit[0]])
            later = x[hit[0] + 1:]
            if later.size:
                above[b], mean_after[b] = float(np.mean(later > 2)), float(np.mean(later))
    return EdgeOfStability(onset=onset, above=above, sharpening=sharpening, mean_after=mean_after)


def balancing_gaps(layers) -> np.ndarray:
    """G (B, L−1): ‖W_{k+1}ᵀW_{k+1} − W_k W_kᵀ‖_F of each network, from layer arrays (B, out, in) (numpy or
    torch) or a list of :class:`~dlnpipe.networks.Weights`."""
    import torch

    from dlnpipe.networks import Weights
    from dlnpipe.tensors import balance_gaps

    if layers and isinstance(layers[0], Weights):
        layers = [np.stack([net.layers[k] for net in layers]) for k in range(layers[0].depth)]
    return balance_gaps([torch.as_tensor(np.asarray(W), dtype=torch.float64) for W in layers]).numpy()


def balance_sampler(nets: list, index: np.ndarray) -> np.ndarray:
    """The balancing gaps along a run (a :data:`dlnpipe.trainer.Sampler`): ``train(..., record_sharpness=True,
    samplers={"traj_balance": balance_sampler})`` records G (B, n_samples, L−1) at each recorded step."""
    return balancing_gaps(nets)


UNSTABLE_MARGIN = 1e-3  # unstable: S above the threshold by more than this (the central flow sits on it)
SADDLE_CURVATURE = 1e-6  # λ_min < −SADDLE_CURVATURE·S: clearly negative (Lanczos resolves ~1e-10·S)
SADDLE_GRADIENT = 1e-3  # ‖∇R‖² < SADDLE_GRADIENT·2S(R − R*): far smaller than any point of a minimizer's basin


def failure_kinds(status, threshold, sharpness, lambda_min, grad_sq, excess, *, edge=None) -> np.ndarray:
    """:class:`FailureKind` (B,) int8 from each network's final status, its optimizer's stability threshold on
    ``edge`` (the sharpness S by default; Adam's is on its preconditioned sharpness) (GD: 2/η; NaN: none, as for
    gradient flow), sharpness S, λ_min, squared gradient norm ‖∇R‖² and excess loss R − R*.

    Near a minimizer (R ≈ R* + ½δᵀHδ) the gradient obeys ‖∇R‖² = δᵀH²δ ≤ 2S(R − R*); a failed network far below
    that bound, with negative curvature, sits at a saddle's plateau. Unstable comes first: with S above the
    threshold the network cannot settle whatever else holds."""
    status = np.asarray(status)
    limit = np.broadcast_to(np.asarray(threshold, dtype=np.float64), np.shape(status))
    S, lmin = np.asarray(sharpness, dtype=np.float64), np.asarray(lambda_min, dtype=np.float64)
    g2, ex = np.asarray(grad_sq, dtype=np.float64), np.asarray(excess, dtype=np.float64)
    kind = np.full(status.shape, FailureKind.SLOW, dtype=np.int8)
    saddle = (lmin < -SADDLE_CURVATURE * S) & (g2 < SADDLE_GRADIENT * 2 * S * np.maximum(ex, 0))
    kind[saddle] = FailureKind.SADDLE
    on = S if edge is None else np.asarray(edge, dtype=np.float64)
    kind[on > limit * (1 + UNSTABLE_MARGIN)] = FailureKind.UNSTABLE  # False where the threshold is NaN
    kind[status == Status.CONVERGED] = FailureKind.CONVERGED
    kind[status == Status.DIVERGED] = FailureKind.DIVERGED
    return kind


def gradient_norm_sq(dataset, nets: list) -> np.ndarray:
    """‖∇R‖² (B,) of networks on ``dataset`` (float64; NaN for non-finite weights)."""
    import torch

    from dlnpipe.tensors import stack_weights

    out = np.full(len(nets), np.nan)
    finite = np.flatnonzero([all(np.isfinite(W).all() for W in net) for net in nets])
    if finite.size:
        arch = nets[0].architecture
        layers, c = stack_weights([nets[i] for i in finite], dtype="float64", device="cpu")
        prob = arch.problem([dataset], in_dim=layers[0].shape[2], dtype=torch.float64, device="cpu")
        grads, _ = arch.gradient(layers, c, prob)
        out[finite] = sum((g * g).flatten(1).sum(1) for g in grads).numpy()
    return out


def classify(dataset, result, *, tol: float = 1e-10, device=None) -> np.ndarray:
    """:func:`failure_kinds` of a :class:`~dlnpipe.result.TrainResult`'s networks on ``dataset`` (GD's threshold
    2/η), measuring what it needs at their final weights (float64): S and λ_min by Lanczos, ‖∇R‖² and R − R*."""
    from dlnpipe.curvature import sharpness, smallest_eigenvalue

    nets = result.networks()
    S = sharpness(dataset, nets, tol=tol, device=device).values
    lmin = smallest_eigenvalue(dataset, nets, tol=tol, device=device).eigenvalues[:, 0]
    excess = dataset.loss(result.regressors()) - dataset.loss_opt
    return failure_kinds(result.status, 2 / np.asarray(result.lr, dtype=float), S, lmin,
                         gradient_norm_sq(dataset, nets), excess)
