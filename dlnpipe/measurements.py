"""What the measure stage records of every trained network: the Hessian's top eigenvalues (Lanczos, with
certificates), trace and, where asked, spectral density, at the end of training and at initialisation;
the exact formulas at converged linear networks (sharpness and trace at a minimizer,
docs/theory.md#the-hessian-at-a-minimizer); the structure of the layers
(docs/theory.md#gradient-flow-from-small-initialisation); and what says where a network that did not converge
is stuck (λ_min and ‖∇R‖², docs/theory.md#the-edge-of-stability-measured) with the balancing gaps at init and
at the end."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlnpipe.curvature import sharpness, smallest_eigenvalue
from dlnpipe.diagnostics import structure
from dlnpipe.eos import balancing_gaps, failure_kinds, gradient_norm_sq
from dlnpipe.spectrum import hessian_trace, spectral_density
from dlnpipe.status import Status


@dataclass(frozen=True)
class Options:
    k: int = 3  # top eigenvalues
    trace_method: str = "hutchinson"  # or "exact" (P Hessian-vector products per network)
    trace_probes: int = 32
    density: bool = False  # spectral density (stochastic Lanczos quadrature) at init and at the end
    density_probes: int = 4
    density_steps: int = 40
    device: object = None


def empty(B: int, depth: int, opts: Options, size: int) -> dict[str, np.ndarray]:
    """The measurements of B networks of this depth and parameter count, NaN until measured."""
    nan = lambda *shape: np.full(shape, np.nan)  # noqa: E731
    out = dict(sharpness_topk=nan(B, opts.k), sharpness_residual=nan(B, opts.k), sharpness_exact=nan(B),
               sharpness_init=nan(B), hessian_trace=nan(B), hessian_trace_stderr=nan(B), hessian_trace_init=nan(B),
               hessian_trace_minimizer=nan(B), sv_ratio=nan(B, depth), alignment=nan(B, max(depth - 1, 0)),
               input_alignment=nan(B), sharpness_converged=np.zeros(B, dtype=bool), lambda_min=nan(B),
               grad_norm_sq=nan(B), balance=nan(B, max(depth - 1, 0)), balance_init=nan(B, max(depth - 1, 0)))
    if opts.density:
        steps = min(opts.density_steps, size)
        for when in ("", "_init"):
            out[f"density_nodes{when}"] = nan(B, opts.density_probes, steps)
            out[f"density_weights{when}"] = nan(B, opts.density_probes, steps)
    return out


def _hessian(out: dict, ds, nets, rows, seeds, opts: Options, *, when: str = "") -> None:
    """Trace (and density) of the networks ``rows`` into ``out`` (suffix ``when``: "" or "_init")."""
    if not rows.size:
        return
    sub = [nets[i] for i in rows]
    tr = hessian_trace(ds, sub, method=opts.trace_method, probes=opts.trace_probes, seeds=seeds[rows],
                       device=opts.device)
    out[f"hessian_trace{when}"][rows] = tr.value
    if not when:
        out["hessian_trace_stderr"][rows] = tr.stderr
    if opts.density:
        sd = spectral_density(ds, sub, probes=opts.density_probes, steps=opts.density_steps, seeds=seeds[rows],
                              device=opts.device)
        out[f"density_nodes{when}"][rows], out[f"density_weights{when}"][rows] = sd.nodes, sd.weights


def measure(nets: list, init: list, datasets: list, status: np.ndarray, seeds: np.ndarray,
            opts: Options) -> dict[str, np.ndarray]:
    """Every measurement of B trained networks ``nets`` (their initial weights ``init``, each network's
    dataset, status and seed), as numpy arrays on the network axis."""
    arch, B, size = nets[0].architecture, len(nets), sum(W.size for W in nets[0].layers)
    out = empty(B, nets[0].depth, opts, size)
    ids = np.array([id(ds) for ds in datasets])
    for key in dict.fromkeys(ids):  # one dataset at a time (the Hessian and the exact formulas need its Σ)
        rows = np.flatnonzero(ids == key)
        ds = datasets[rows[0]]
        keep = rows[status[rows] != Status.DIVERGED]
        if keep.size:
            k = min(opts.k, size)  # a network of fewer parameters has fewer eigenvalues: the rest stay NaN
            s = sharpness(ds, [nets[i] for i in keep], method="lanczos", k=k, seeds=seeds[keep],
                          device=opts.device)
            out["sharpness_topk"][keep, :k], out["sharpness_residual"][keep, :k] = s.eigenvalues, s.residuals
            out["sharpness_converged"][keep] = s.converged
            out["lambda_min"][keep] = smallest_eigenvalue(ds, [nets[i] for i in keep], seeds=seeds[keep],
                                                          device=opts.device).eigenvalues[:, 0]
            out["grad_norm_sq"][keep] = gradient_norm_sq(ds, [nets[i] for i in keep])
        _hessian(out, ds, nets, keep, seeds, opts)
        conv = rows[status[rows] == Status.CONVERGED]
        if conv.size and arch.linear:
            out["sharpness_exact"][conv] = sharpness(ds, [nets[i] for i in conv], method="exact").values
            out["hessian_trace_minimizer"][conv] = hessian_trace(ds, [nets[i] for i in conv], method="minimizer").value
        out["sharpness_init"][rows] = sharpness(ds, [init[i] for i in rows], method="lanczos", seeds=seeds[rows],
                                                device=opts.device).values
        _hessian(out, ds, init, rows, seeds, opts, when="_init")
        out["balance"][rows] = balancing_gaps([nets[i] for i in rows])
        out["balance_init"][rows] = balancing_gaps([init[i] for i in rows])
        st = structure([nets[i] for i in rows], w_star=ds.w_star)
        out["sv_ratio"][rows], out["alignment"][rows], out["input_alignment"][rows] = (
            st.sv_ratio, st.alignment, st.input_alignment)
    return out


def ended(out: dict, train: dict, datasets: list, stepper, settings: dict) -> np.ndarray:
    """How each network ended (:class:`dlnpipe.eos.FailureKind`, (B,) int8) from its measurements ``out`` and its
    trained cell's arrays ``train``: the status, and for a failed network what holds it, against the threshold of
    its optimizer (``stepper``, a :mod:`dlnpipe.steppers` class, with each network's option values ``settings``)
    on the sharpness that threshold is about (docs/theory.md#the-edge-of-stability-measured)."""
    S = out["sharpness_topk"][:, 0]
    edge = S if stepper.edge_on == "sharpness" else out.get(stepper.edge_on, np.full_like(S, np.nan))
    excess = np.asarray(train["loss_train"], dtype=np.float64) - np.array([ds.loss_opt for ds in datasets])
    return failure_kinds(train["status"], stepper.threshold(train["lr"], settings), S, out["lambda_min"],
                         out["grad_norm_sq"], excess, edge=edge)


def top_sharpness(nets: list, datasets: list, keep: np.ndarray, seeds: np.ndarray, opts: Options,
                  precond: np.ndarray | None = None) -> np.ndarray:
    """The Lanczos sharpness (B,) of the networks ``keep`` (a boolean mask), NaN elsewhere; with ``precond``
    (B, P), that of P⁻¹H (Adam's preconditioned sharpness, :mod:`dlnpipe.steppers.adam`)."""
    out = np.full(len(nets), np.nan)
    ids = np.array([id(ds) for ds in datasets])
    for key in dict.fromkeys(ids[keep]):
        rows = np.flatnonzero(keep & (ids == key))
        out[rows] = sharpness(datasets[rows[0]], [nets[i] for i in rows], method="lanczos", seeds=seeds[rows],
                              device=opts.device, precond=None if precond is None else precond[rows]).values
    return out


def optimizer_measurements(arrays: dict, nets: list, datasets: list, status: np.ndarray, seeds: np.ndarray,
                           opts: Options, averaged: list | None) -> dict[str, np.ndarray]:
    """What an optimizer's own outputs add: Adam's preconditioned sharpness at the end (``precond`` in the
    trained cell), and the sharpness at the average of a stochastic run's last iterates (``averaged``)."""
    out = {}
    alive = status != Status.DIVERGED
    if "precond" in arrays:
        out["sharpness_precond"] = top_sharpness(nets, datasets, alive, seeds, opts, precond=arrays["precond"])
    if averaged is not None:
        finite = np.array([all(np.isfinite(W).all() for W in net.layers) for net in averaged])
        out["sharpness_avg"] = top_sharpness(averaged, datasets, alive & finite, seeds, opts)
    return out
