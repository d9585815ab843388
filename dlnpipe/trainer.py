"""One trainer for every stepper: the batch of networks being trained and what it owes the caller.

A :class:`BatchState` holds the *live rows* (networks still training) as layer tensors (b, out, in),
the row prefix c, the rows of the problem and the per-network tensors of its stepper (typed
:class:`Rows`: the stepper's clock and, apart, its optimizer's state, each attached to the batch
so that it is compacted with it), and the *outputs* of all B networks: final weights and losses,
trajectories on the recording grid, the step of divergence. A stepper (:mod:`dlnpipe.steppers`)
only advances the live rows and says when to sample and which rows are done; the state records,
retires (copies out, holds the final values on later samples of a network that can no longer move),
compacts the batch, and turns the outputs into statuses (:class:`dlnpipe.status.Status`). Everything
stays on the device; the host sees only the decisions (any row done?) and, at the end, the results.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch

from dlnpipe.archs import Architecture
from dlnpipe.curvature import networks_per_batch, start_vectors, top_eigenvalues
from dlnpipe.devices import memory_budget
from dlnpipe.networks import Weights
from dlnpipe.problem import Problem, distance
from dlnpipe.rows import Rows
from dlnpipe.status import Status

log = logging.getLogger("dlnpipe.training")

METRICS = ("loss_train", "loss_test", "distance")


Sample = int | torch.Tensor  # a sample index: one for all live rows, or one per row (b,)
# A quantity sampled with the trajectory sharpness: (the sampled networks, their indices in the call (b,)) -> (b, ...)
Sampler = Callable[[list[Weights], np.ndarray], np.ndarray]


class TrajectorySharpness:
    """The Lanczos sharpness of live rows at sampling times, in float64 on the batch's device.

    Start vectors come from each network's seed (as :func:`dlnpipe.curvature.sharpness` draws them),
    so a sample equals the sharpness of that network's weights measured on their own. Each of ``samplers`` (name →
    a :data:`Sampler`) is sampled there too, into ``extras()[name]`` (B, n_samples, ...) (e.g. φ,
    :func:`dlnpipe.gfs.phi_sampler`; the balancing gaps, :func:`dlnpipe.eos.balance_sampler`)."""

    def __init__(self, prob64: Problem, seeds: np.ndarray, size: int, n_samples: int, *, tol: float, device,
                 samplers: dict[str, Sampler] | None = None):
        self.prob, self.seeds, self.samplers = prob64, seeds, dict(samplers or {})
        self.sampled: dict[str, np.ndarray] = {}  # name -> (B, n_samples, ...), shaped by its first sample
        self.v0 = start_vectors(seeds, size, device=device)  # (B, P)
        self.values = np.full((len(seeds), n_samples), np.nan)
        self.values_precond: np.ndarray | None = None  # the preconditioned sharpness (optimizers with one)
        self.tol = tol
        self.per_batch = networks_per_batch(size, 1, memory_budget(device))

    def compact(self, keep: torch.Tensor) -> None:
        self.prob, self.v0 = self.prob.rows(keep), self.v0[keep]

    def record(self, state: BatchState, due: torch.Tensor, j: Sample, precond: torch.Tensor | None = None) -> None:
        """Sample j of the rows ``due``; with ``precond`` (b, P), also λ_max(P^{-1/2} H P^{-1/2})."""
        rows = torch.nonzero(due)[:, 0]
        if precond is not None and self.values_precond is None:
            self.values_precond = np.full_like(self.values, np.nan)
        values_precond = self.values_precond
        for part in rows.split(self.per_batch):
            layers = [W[part].to(torch.float64) for W in state.layers]
            c = state.c[part].to(torch.float64)
            gi = state.idx[part].cpu().numpy()
            jj = j if isinstance(j, int) else j[part].cpu().numpy()
            out = top_eigenvalues(state.arch, layers, c, self.prob.rows(part), self.v0[part], k=1, tol=self.tol)
            self.values[gi, jj] = out.eigenvalues[:, 0]
            if self.samplers:
                nets = _weights(state.arch, layers, c, self.seeds[gi])
                for name, sampler in self.samplers.items():
                    value = np.asarray(sampler(nets, gi), dtype=np.float64)
                    if name not in self.sampled:
                        self.sampled[name] = np.full((*self.values.shape, *value.shape[1:]), np.nan)
                    self.sampled[name][gi, jj] = value
            if precond is not None and values_precond is not None:
                out = top_eigenvalues(state.arch, layers, c, self.prob.rows(part), self.v0[part], k=1,
                                      tol=self.tol, precond=precond[part].to(torch.float64))
                values_precond[gi, jj] = out.eigenvalues[:, 0]

    def extras(self) -> dict[str, np.ndarray]:
        out = {} if self.values_precond is None else {"traj_sharpness_precond": self.values_precond}
        return {**out, **self.sampled}


def _weights(arch: Architecture, layers: list[torch.Tensor], c: torch.Tensor, seeds: np.ndarray) -> list[Weights]:
    """The rows of a batch as :class:`Weights` (float64 numpy), each with its network's seed."""
    arrays = [W.to(torch.float64).cpu().numpy() for W in layers]
    arrays += [c[:, 0, :].to(torch.float64).cpu().numpy()] if arch.has_projection else []
    return [Weights([a[i] for a in arrays], arch=arch, seed=int(s)) for i, s in enumerate(seeds)]


class BatchState:
    """B networks of one architecture, depth and width being trained together (see the module docstring).

    ``loss_opt`` and ``threshold`` (B,) give each network's convergence test: R − R* ≤ threshold.
    """

    def __init__(self, arch: Architecture, layers: list[torch.Tensor], c: torch.Tensor, prob: Problem, *,
                 n_samples: int, loss_opt: np.ndarray, threshold: np.ndarray,
                 sharpness: TrajectorySharpness | None = None, log_every_s: float | None = 10.0, label: str = ""):
        B, dev = layers[0].shape[0], layers[0].device
        self.arch, self.layers, self.c, self.prob = arch, layers, c, prob
        self.idx = torch.arange(B, device=dev)  # global index of each live row
        self.attached: list[Rows] = []  # the stepper's per-network tensors, compacted with the batch
        self.traj = {k: torch.full((B, n_samples), float("nan"), dtype=torch.float64, device=dev) for k in METRICS}
        self.final = {k: torch.full((B,), float("nan"), dtype=torch.float64, device=dev) for k in METRICS}
        self.out_layers = [torch.empty_like(W) for W in layers]
        self.diverged_at = torch.full((B,), float("nan"), dtype=torch.float64, device=dev)  # in steps
        self.evaluations = torch.zeros(B, dtype=torch.int64, device=dev)  # gradient evaluations of each network
        self.loss_opt, self.threshold = loss_opt, threshold
        self.sharpness = sharpness
        self.label = label or arch.name  # how progress lines name the batch
        self.log_every_s, self.t0, self.last_log, self.net_steps = log_every_s, time.monotonic(), time.monotonic(), 0

    @property
    def size(self) -> int:
        """Number of live rows."""
        return self.idx.numel()

    def attach(self, *rows: Rows) -> None:
        """Compact ``rows`` with the batch from now on (each must hold one entry per live row)."""
        for r in rows:
            if any(x.shape[0] != self.size for x in r.tensors()):
                raise ValueError(f"{type(r).__name__} does not hold one entry per live row ({self.size})")
        self.attached += rows

    def evaluated(self, count: int | torch.Tensor = 1) -> None:
        """Count ``count`` gradient evaluations (one for all live rows, or (b,)) for each live row."""
        self.evaluations[self.idx] += count

    def observe(self, rows: torch.Tensor, value: torch.Tensor, w: torch.Tensor | None = None,
                test: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training loss (``value``, (b,)), test loss and ‖w_prod − w*‖² of the live rows in ``rows``: at their
        current layers, or at regressors ``w`` (b, in) and with test losses ``test`` (b,) computed elsewhere
        (a compiled kernel; a linear net's test loss is its regressor's, from the moments)."""
        layers, c, prob = [W[rows] for W in self.layers], self.c[rows], self.prob.rows(rows)
        given = w is not None
        w = self.arch.regressor(layers, c) if w is None else w[rows]
        if test is None:
            assert self.arch.linear or not given, "only a linear net's test loss is a function of its regressor"
            test_loss = self.arch.test_loss(layers, c, prob, w)
        else:
            test_loss = test[rows]
        return {"loss_train": value[rows], "loss_test": test_loss, "distance": distance(w, prob)}

    def record(self, due: torch.Tensor, j: Sample, value: torch.Tensor, precond: torch.Tensor | None = None,
               w: torch.Tensor | None = None) -> None:
        """Sample j (one index for all, or a (b,) tensor of per-row indices) of the live rows in ``due``
        (``precond``: the optimizer's diagonal preconditioner of the live rows, (b, P), where it has one;
        ``w``: the rows' regressors at the sample, where they are not those of the current layers)."""
        if bool(due.any()):
            self.store(due, j, self.observe(due, value, w), precond)

    def store(self, due: torch.Tensor, j: Sample, observed: dict[str, torch.Tensor],
              precond: torch.Tensor | None = None) -> None:
        """Sample j of the live rows in ``due`` from their observed metrics (:meth:`observe`, rows ``due``) and,
        with trajectory sharpness, the Lanczos sharpness at the current layers."""
        gi, jj = self.idx[due], (j if isinstance(j, int) else j[due])
        for key, v in observed.items():
            self.traj[key][gi, jj] = v.to(torch.float64)
        if self.sharpness is not None:
            self.sharpness.record(self, due, j, None if precond is None else precond[due])

    def retire(self, done: torch.Tensor, value: torch.Tensor, *, diverged: torch.Tensor | None = None,
               at: torch.Tensor | None = None, hold: torch.Tensor | None = None) -> None:
        """Copy out the live rows in ``done`` at their current point (not yet dropped: see :meth:`compact`).

        diverged, at: (b,) which live rows diverged and when (in steps); hold: (n_done, n_samples) the
        samples after now that repeat the current values (a network that can no longer move)."""
        gi = self.idx[done]
        for k, W in enumerate(self.layers):
            self.out_layers[k][gi] = W[done]
        current = self.observe(done, value)
        for key, v in current.items():
            self.final[key][gi] = v.to(torch.float64)
        if diverged is not None:
            assert at is not None, "a divergence mask comes with the divergence steps"
            self.diverged_at[gi] = torch.where(diverged[done], at[done].to(torch.float64), self.diverged_at[gi])
        if hold is not None:
            for key, v in current.items():
                self.traj[key][gi] = torch.where(hold, v.to(torch.float64)[:, None], self.traj[key][gi])

    def compact(self, keep: torch.Tensor) -> None:
        """Keep only the live rows selected by ``keep``."""
        self.layers = [W[keep].contiguous() for W in self.layers]
        self.prob = self.prob.rows(keep)
        self.c, self.idx = self.c[keep], self.idx[keep]
        for rows in self.attached:
            rows.compact_(keep)
        if self.sharpness is not None:
            self.sharpness.compact(keep)

    def progress(self, net_steps: int, message: Callable[[float], str]) -> None:
        """Count ``net_steps`` network-steps; every ``log_every_s`` log ``message(rate)`` (a callable)."""
        self.net_steps += net_steps
        if self.log_every_s is not None and time.monotonic() - self.last_log >= self.log_every_s:
            self.last_log = time.monotonic()
            log.info(message(self.net_steps / (self.last_log - self.t0)))

    def statuses(self) -> tuple[np.ndarray, np.ndarray]:
        """(status (B,) int8, diverged_step (B,) int64, -1 where the network never diverged)."""
        at = self.diverged_at.cpu().numpy()
        diverged = ~np.isnan(at)
        status = np.full(at.shape, Status.FAILED, dtype=np.int8)
        status[self.final["loss_train"].cpu().numpy() - self.loss_opt <= self.threshold] = Status.CONVERGED
        status[diverged] = Status.DIVERGED
        return status, np.where(diverged, np.floor(np.nan_to_num(at)), -1).astype(np.int64)
