"""The gradient-flow solution of a point and its sharpness (docs/theory.md#the-gradient-flow-solution).

For weights w, GFS(w) is the minimizer that gradient flow started at w reaches, and φ(w) = S(GFS(w)) its
sharpness (Kreisler, Nacson, Soudry, Carmon, ICML 2023). φ is constant along a gradient-flow trajectory, φ of
a minimizer is its sharpness, and φ of an initialisation is what the paper's theorems bound; along a GD run,
φ_t = φ(w_t) says where the flow would end from each iterate.

:func:`flow_solution` runs the flow (:mod:`dlnpipe.steppers.flow`, the compiled kernel for linear nets on the
CPU) from a batch of networks until each converges; :func:`gfs_sharpness` measures the limits (the d×d
formula for linear nets, exact at a global minimizer; Lanczos otherwise).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from dlnpipe._checks import check_positive
from dlnpipe.data import Dataset
from dlnpipe.networks import Weights
from dlnpipe.status import Status

log = logging.getLogger(__name__)

HORIZON = 1e7  # flow time: a run stops on convergence long before (or at max_steps, reported)


@dataclass(frozen=True)
class FlowSolution:
    """The flow's limits from B networks. limits: one :class:`Weights` per network (where the flow stopped);
    converged (B,): the flow reached R − R* within 1e-6 of the convergence threshold (rtol·R* + atol·yᵀy/n), so
    that the limit is a global minimizer to that precision; excess (B,): R − R* there; evaluations (B,): the
    gradient evaluations it took. Networks whose weights are not finite get NaN limits, not converged."""

    limits: list[Weights]
    converged: np.ndarray
    excess: np.ndarray
    evaluations: np.ndarray

    def __len__(self) -> int:
        return len(self.limits)


def _batch(weights) -> list[Weights]:
    from dlnpipe.curvature import _as_batch

    nets = _as_batch(weights)
    arch, shapes = nets[0].architecture, [W.shape for W in nets[0]]
    if any(net.architecture is not arch or [W.shape for W in net] != shapes for net in nets):
        raise ValueError("the networks of one call share architecture and layer shapes")
    return nets


def flow_solution(dataset: Dataset | list[Dataset], weights, *, rtol: float = 1e-8, atol: float = 1e-10,
                  flow_rtol: float = 1e-10, flow_atol: float = 1e-12, max_steps: int = 100_000,
                  horizon: float = HORIZON, device="cpu", max_batch: int | None = None) -> FlowSolution:
    """Gradient flow from each network of ``weights`` (a :class:`Weights`, a list of them, a TrainResult) on
    ``dataset`` (one for all, or one per network for linear nets) until it converges (R − R* below 1e-6 of
    rtol·R* + atol·yᵀy/n), for flow time ``horizon`` at most, with error tolerances ``flow_rtol``/``flow_atol``
    and at most ``max_steps`` accepted steps; float64."""
    nets = _batch(weights)
    check_positive("horizon", horizon)
    data = dataset if isinstance(dataset, Dataset) else list(dataset)
    finite = np.array([all(np.isfinite(W).all() for W in net) for net in nets])
    limits = [Weights([np.full_like(W, np.nan) for W in net], arch=net.architecture, seed=net.seed) for net in nets]
    converged = np.zeros(len(nets), dtype=bool)
    excess, evaluations = np.full(len(nets), np.nan), np.zeros(len(nets), dtype=np.int64)
    todo = np.flatnonzero(finite)
    if todo.size == 0:
        return FlowSolution(limits, converged, excess, evaluations)
    start = [nets[i] for i in todo]
    arch = start[0].architecture
    quiet = logging.getLogger("dlnpipe.training")  # a flow per call (per sample, along a run): no progress lines
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))
    try:
        res = _flow(data if isinstance(data, Dataset) else [data[i] for i in todo], start, arch, rtol=rtol, atol=atol,
                    flow_rtol=flow_rtol, flow_atol=flow_atol, max_steps=max_steps, horizon=horizon, device=device,
                    max_batch=max_batch)
    finally:
        quiet.setLevel(level)
    for j, i in enumerate(todo):
        limits[i] = Weights(res.network(j), arch=arch, seed=nets[i].seed)
    converged[todo] = res.status == Status.CONVERGED
    per_data = [data] * len(todo) if isinstance(data, Dataset) else [data[i] for i in todo]
    excess[todo] = [ds.loss(res.regressors()[j:j + 1])[0] - ds.loss_opt for j, ds in enumerate(per_data)]
    evaluations[todo] = res.extras["evaluations"]
    if not converged[todo].all():
        log.warning("flow_solution: %d of %d flows did not converge (max_steps=%d, horizon=%g)",
                    int((~converged[todo]).sum()), todo.size, max_steps, horizon)
    return FlowSolution(limits, converged, excess, evaluations)


def _flow(data, start: list[Weights], arch, *, rtol, atol, flow_rtol, flow_atol, max_steps, horizon, device,
          max_batch):
    from dlnpipe.training import train

    width = start[0].layers[0].shape[0] if start[0].depth > 1 else 1
    return train(data, arch=arch.name, depth=start[0].depth, width=width, lr=1.0, scale=0.0,
                 steps=max(1, int(np.ceil(horizon))), seed=[0 if net.seed is None else net.seed for net in start],
                 init=start, optimizer="flow", record_steps=[0], rtol=rtol, atol=atol, flow_rtol=flow_rtol,
                 flow_atol=flow_atol, flow_max_steps=max_steps, dtype="float64", device=device, log_every_s=None,
                 max_batch=max_batch)


def gfs_sharpness(dataset: Dataset | list[Dataset], weights, *, method: str | None = None, tol: float = 1e-10,
                  device="cpu", **flow) -> np.ndarray:
    """φ (B,): the sharpness of the gradient-flow solution from each network of ``weights`` on ``dataset`` (one
    for all, or one per network); NaN where the flow did not converge (or the weights are not finite).
    ``method``: how the limits are measured (default ``exact`` for linear nets, ``lanczos`` otherwise; see
    :func:`dlnpipe.sharpness`); ``flow``: options of :func:`flow_solution`."""
    from dlnpipe.curvature import sharpness

    nets = _batch(weights)
    method = method or ("exact" if nets[0].architecture.linear else "lanczos")
    per_data = [dataset] * len(nets) if isinstance(dataset, Dataset) else list(dataset)
    if len(per_data) != len(nets):
        raise ValueError(f"dataset must be one Dataset or one per network ({len(nets)}), got {len(per_data)}")
    sol = flow_solution(dataset, nets, device=device, **flow)
    phi = np.full(len(nets), np.nan)
    for ds in {id(x): x for x in per_data}.values():  # the Hessian of each dataset's networks
        ok = np.flatnonzero(sol.converged & np.array([x is ds for x in per_data]))
        if ok.size:
            seeds = [0 if nets[i].seed is None else nets[i].seed for i in ok]
            phi[ok] = sharpness(ds, [sol.limits[i] for i in ok], method=method, tol=tol, device=device,
                                seeds=seeds).values
    return phi


def phi_sampler(dataset: Dataset | list[Dataset], **options):
    """φ along a run: ``train(..., record_sharpness=True, samplers={"traj_gfs_sharpness": phi_sampler(dataset)})``
    samples :func:`gfs_sharpness` (with ``options``) at each recorded step; ``dataset``: the run's (one for all,
    or one per network of the call)."""

    def sample(nets: list[Weights], index: np.ndarray) -> np.ndarray:
        data = dataset if isinstance(dataset, Dataset) else [dataset[i] for i in index]
        return gfs_sharpness(data, nets, **options)

    return sample
