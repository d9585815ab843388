"""Gradient flow dW/dt = −∇R(W) for a batch of networks, by an adaptive error-controlled solver.

The theorems on small and residual initialisation (docs/theory.md) are about gradient *flow*; GD with a
small η is only a proxy.
This integrates the flow itself with the Dormand–Prince 5(4) pair (the embedded error estimate
of ``scipy.integrate.RK45``), one step size per network: a step is accepted when the scaled error
    err = rms( (y₅ − y₄) / (atol + rtol·max(|y|, |y_new|)) ) ≤ 1,
and the next step is h·clip(0.9·err^(−1/5), 0.2, 5). Every network of the batch takes its own
step at the same time (one batched gradient per stage) and leaves the batch when it reaches its
time horizon T = η·steps, when its excess loss R − R* falls below ``stop`` (1e-6 of its
convergence threshold: the flow has converged to within far less than the convergence test; its
later samples then hold its final values), after ``max_steps`` accepted steps (a stiff flow from
a large init, reported where it stopped), when its error control keeps the step below a stepper's
stall length for STALL_STEPS accepted steps in a row (the central flow: a field that chatters, reported
where it stopped), or when its loss blows up (diverged, frozen where it is; its divergence step is t/η).
Samples are taken at the times η·record_steps exactly (steps are shortened to land on them).

Linear nets on the CPU integrate in the compiled kernel (``Architecture.fused_flow``, decided once per
batch, logged and recorded in :attr:`~dlnpipe.steppers.base.Stepper.path`): the same solver step for
step, the field from the moments, and the samples (the regressor and R − R*, from which the losses
follow) taken there; the torch path below is the reference it is tested against and the fallback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from dlnpipe._checks import check_int, check_positive
from dlnpipe.lazy import torch
from dlnpipe.rows import Rows
from dlnpipe.status import TrainPath
from dlnpipe.steppers.base import EXPLODE, Schedule, Stepper, divergence_cap
from dlnpipe.tensors import flatten, unflatten

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger("dlnpipe.training")

STALL_STEPS = 200  # accepted steps in a row below the stall length: the flow is stuck (GradientFlow.stall)

# Dormand–Prince 5(4): nodes, stage coefficients, 5th-order weights (= last stage row, FSAL), error weights.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4))


def _rms(x):
    return torch.sqrt((x * x).mean(dim=1))


@dataclass
class FlowRows(Rows):
    """The solver's state per network: the flattened weights y (b, P), the field f = −∇R(y) there, R − R*,
    the time t and step h, the record times (b, T) and the index of the next one, the horizon T, η (time
    per GD step), the divergence cap, the convergence stop on R − R* and how many accepted steps in a row
    the error control has held below the stall length (:attr:`GradientFlow.stall`)."""

    y: Tensor
    f: Tensor
    excess: Tensor
    t: Tensor
    h: Tensor
    rec: Tensor
    nxt: Tensor
    T: Tensor
    lr: Tensor
    cap: Tensor
    stop: Tensor
    short: Tensor


class GradientFlow(Stepper):
    name = "flow"
    options: ClassVar[tuple[str, ...]] = ("flow_rtol", "flow_atol", "flow_max_steps", "explode")
    records_sharpness = False
    compiled = True  # whether a compiled flow may integrate the batch (its field is −∇R)
    # the torch path stops a network whose error control keeps its step below this fraction of a GD step for
    # STALL_STEPS accepted steps in a row (None: never; gradient flow's field is smooth, a stiff one runs to
    # max_steps)
    stall: float | None = None

    @classmethod
    def threshold(cls, lr, settings):
        """None: the flow has no step size."""
        return np.full(np.shape(lr), np.nan)

    def __init__(self, *, flow_rtol: float = 1e-8, flow_atol: float = 1e-10, flow_max_steps: int = 100_000,
                 explode: float = EXPLODE):
        super().__init__()
        self.rtol, self.atol = check_positive("flow_rtol", flow_rtol), check_positive("flow_atol", flow_atol)
        self.max_steps = check_int("flow_max_steps", flow_max_steps, minimum=1)
        self.explode = float(explode)

    @classmethod
    def evaluations(cls, steps: int, options: dict) -> float:
        """Six new field evaluations per accepted step; at most ``flow_max_steps`` steps, most flows
        far fewer (they stop once converged): a bound, not a forecast."""
        return 6.0 * min(steps, options.get("flow_max_steps", 100_000))

    def field(self, state, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(−∇R(y), R(y) − R*) for the live rows y (b, P)."""
        grads, excess = state.arch.gradient(unflatten(y, self.like), state.c, state.prob)
        return -flatten(grads), excess

    def start(self, state, schedule: Schedule) -> None:
        B, dev, like = state.size, state.idx.device, state.layers
        self.like, self.evals = like, 1
        self.accepted = torch.zeros(B, dtype=torch.int64, device=dev)  # all B networks, by global index
        dtype = like[0].dtype
        self.rec = torch.as_tensor(schedule.lr[:, None] * schedule.record_steps[None, :], dtype=dtype, device=dev)
        self.T = torch.as_tensor(schedule.lr * schedule.steps, dtype=dtype, device=dev)
        self.lr = torch.as_tensor(schedule.lr, dtype=torch.float64, device=dev)
        self.stop = torch.as_tensor(1e-6 * state.threshold, dtype=dtype, device=dev).expand(B).clone()
        # one decision for the batch: the compiled flow integrates it all, or the torch path step by step
        if self.compiled:
            self.fused, why = state.arch.fused_flow(state.layers, state.c, state.prob)
        else:
            self.fused, why = None, f"the {self.name} field has no compiled form"
        self.path = TrainPath.COMPILED if self.fused is not None else TrainPath.TORCH
        log.info("flow %s: %s", state.label, "the compiled kernel integrates every network"
                 if self.fused is not None else f"the torch path ({why})")
        if self.fused is not None:
            return
        y = flatten(like).clone()
        f, excess = self.field(state, y)
        state.evaluated()
        # initial step (Hairer, Nørsett & Wanner II.4): h0 = 0.01·‖y‖/‖f‖ in the scaled norm, at most T
        sc = self.atol + self.rtol * y.abs()
        d0, d1 = _rms(y / sc), _rms(f / sc)
        h = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
        self.rows = FlowRows(
            y=y, f=f, excess=excess, t=torch.zeros(B, dtype=y.dtype, device=dev),
            h=torch.minimum(h, self.T).clamp(min=1e-12), rec=self.rec,
            nxt=torch.zeros(B, dtype=torch.int64, device=dev),
            T=self.T, lr=self.lr, cap=divergence_cap(excess + state.prob.loss_opt, state.prob.yty, self.explode),
            stop=self.stop, short=torch.zeros(B, dtype=torch.int64, device=dev))
        state.attach(self.rows)
        self._sample(state, torch.ones(B, dtype=torch.bool, device=dev))

    def _compiled(self, state) -> None:
        """The whole batch by the compiled flow: its samples recorded, every network retired."""
        prob = state.prob
        cap = divergence_cap(state.arch.evaluate(state.layers, state.c, prob).value, prob.yty, self.explode)
        out = self.fused(flatten(state.layers), state.c, prob, depth=len(state.layers), rec=self.rec, T=self.T,
                         stop=self.stop, cap=cap, max_steps=self.max_steps, rtol=self.rtol, atol=self.atol)
        state.evaluated(out.evaluations)
        self.accepted, self.evals = out.accepted, int(out.evaluations.sum())
        for j in range(self.rec.shape[1]):
            state.record(out.nrec > j, j, out.ex_rec[:, j] + prob.loss_opt, w=out.w_rec[:, j])
        state.layers = unflatten(out.weights, self.like)
        t = out.t[:, None]
        conv = (out.excess <= self.stop) & ~out.diverged
        hold = conv[:, None] & (self.rec > t * (1 + 1e-12)) & (self.rec <= self.T[:, None] * (1 + 1e-12))
        done = torch.ones_like(conv)
        state.retire(done, out.excess + prob.loss_opt, diverged=out.diverged, at=out.t.to(torch.float64) / self.lr,
                     hold=hold)
        state.compact(~done)

    def _sync(self, state) -> torch.Tensor:
        """Point the state's layers at the live rows' parameters; the rows' training loss."""
        state.layers = unflatten(self.rows.y, self.like)
        return self.rows.excess + state.prob.loss_opt

    def _next_time(self):
        """Each live row's next record time (+inf when none is left)."""
        r = self.rows
        nT = r.rec.shape[1]
        at = r.rec.gather(1, r.nxt.clamp(max=nT - 1)[:, None])[:, 0]
        return torch.where(r.nxt < nT, at, torch.full_like(at, float("inf")))

    def _sample(self, state, rows: torch.Tensor) -> None:
        """Record the rows in ``rows`` whose next record time is reached (maybe several in a row)."""
        r = self.rows
        due = rows & (r.t >= self._next_time() * (1 - 1e-12))
        if bool(due.any()):
            value = self._sync(state)
        while bool(due.any()):
            state.record(due, r.nxt, value)
            self._sampled(state, due, r.nxt)
            r.nxt = torch.where(due, r.nxt + 1, r.nxt)
            due = due & (r.t >= self._next_time() * (1 - 1e-12))

    def _sampled(self, state, due: torch.Tensor, j: torch.Tensor) -> None:
        """What a subclass records with sample ``j`` (per row) of the live rows ``due``: nothing here."""

    def _leave(self, state) -> None:
        """Retire rows at their horizon, converged to ``stop``, out of steps, stalled, or diverged (frozen)."""
        r = self.rows
        bad = ~torch.isfinite(r.excess) | (r.excess > r.cap)
        stalled = r.short >= STALL_STEPS
        done = ((r.t >= r.T * (1 - 1e-14)) | (r.excess <= r.stop) | bad | stalled
                | (self.accepted[state.idx] >= self.max_steps))
        if not bool(done.any()):
            return
        stuck = stalled & ~bad
        if bool(stuck.any()):
            log.warning("flow %s: %d networks stopped where their step stayed below %g of a GD step for %d accepted "
                        "steps in a row (a field that changes within a fraction of a step), at GD steps %s",
                        state.label, int(stuck.sum()), self.stall, STALL_STEPS,
                        ", ".join(f"{float(x):.4g}" for x in (r.t / r.lr)[stuck][:8]))
        # networks that stopped early because they converged keep their final state at later record times
        rec, t, T = r.rec[done], r.t[done][:, None], r.T[done][:, None]
        conv = (r.excess[done] <= r.stop[done]) & ~bad[done]
        hold = conv[:, None] & (rec > t * (1 + 1e-12)) & (rec <= T * (1 + 1e-12))
        state.retire(done, self._sync(state), diverged=bad, at=r.t.to(torch.float64) / r.lr, hold=hold)
        state.compact(~done)

    def advance(self, state) -> bool:
        if self.fused is not None:
            self._compiled(state)
            self._report(state)
            return False
        self._leave(state)
        if state.size == 0:
            self._report(state)
            return False
        r = self.rows
        # do not step over the horizon or the next record time
        h = torch.minimum(r.h, torch.minimum(self._next_time(), r.T) - r.t).clamp(min=1e-14)
        y, k = r.y, [r.f]
        for s in range(1, 6):
            ys = y + h[:, None] * sum(a * ki for a, ki in zip(_A[s], k))
            k.append(self.field(state, ys)[0])
        y5 = y + h[:, None] * sum(b * ki for b, ki in zip(_B5, k) if b)
        f5, ex5 = self.field(state, y5)
        k.append(f5)
        self.evals += 6
        state.evaluated(6)
        err = _rms(h[:, None] * sum(e * ki for e, ki in zip(_E, k) if e)
                   / (self.atol + self.rtol * torch.maximum(y.abs(), y5.abs())))
        ok = (err <= 1.0) & torch.isfinite(err)
        if self.stall is not None:  # the controller's step (not one shortened to land on a sample) stayed tiny
            short = r.h < self.stall * r.lr.to(r.h.dtype)
            r.short = torch.where(ok, torch.where(short, r.short + 1, torch.zeros_like(r.short)), r.short)
        r.y = torch.where(ok[:, None], y5, y)
        r.f = torch.where(ok[:, None], f5, r.f)
        r.excess = torch.where(ok, ex5, r.excess)
        r.t = torch.where(ok, r.t + h, r.t)
        self.accepted[state.idx] += ok.to(torch.int64)
        factor = torch.where(torch.isfinite(err), 0.9 * err.clamp(min=1e-10) ** -0.2, torch.full_like(err, 0.2))
        r.h = h * factor.clamp(0.2, 5.0)
        state.progress(state.size, lambda rate: f"flow {state.label}: {state.size} networks active, "
                                                f"{self.evals} field evaluations, {rate:.3g} network-steps/s")
        if bool(ok.any()):
            self._sample(state, ok)
        return True

    def _report(self, state) -> None:
        log.info("flow %s: %d networks, %d %sfield evaluations, median %d accepted steps", state.label,
                 self.accepted.numel(), self.evals, "" if self.fused is not None else "batched ",
                 int(np.median(self.accepted.cpu().numpy())))
