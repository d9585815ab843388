"""What the explicit optimizers beyond plain GD share (heavy ball, Adam, mini-batch SGD, label noise).

Each step takes one gradient per network: of the full training loss, or (:mod:`dlnpipe.steppers.sgd`)
of a mini-batch with noisy labels, and hands it to the optimizer's update rule, which keeps its own
per-network tensors (a velocity, moment estimates: :class:`OptimizerRows`). Everything else is the
trainer's, as for GD: a network that diverges (the rules of :mod:`dlnpipe.steppers.base`) is frozen
where it is (its optimizer state too) and leaves at the next check; a network leaves the
batch after its own step count; samples are the full training and test losses at W_t.

Stochastic runs (mini-batches or label noise) keep fluctuating at a constant step size unless they
interpolate (n < d: every mini-batch loss is zero at the same minimizers, and SGD without label
noise converges there), so they are reported twice: at their *last iterate* (the weights, losses,
status and every Hessian measurement, as for GD) and at the *average of their last iterates* (the
mean of the weights W_t over the last ⌈steps/10⌉ steps, with its losses, ``*_avg``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dlnpipe._checks import check_int
from dlnpipe.lazy import torch
from dlnpipe.problem import distance
from dlnpipe.rows import Rows
from dlnpipe.steppers.base import EXPLODE, Progress, Schedule, Stepper

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger("dlnpipe.training")

AVERAGE_FRACTION = 10  # stochastic runs: the average of the last ⌈steps / AVERAGE_FRACTION⌉ iterates


def tail_length(steps):
    """How many last iterates a stochastic run averages: ⌈steps / 10⌉, at least 1."""
    return np.maximum(1, -(-np.asarray(steps, dtype=np.int64) // AVERAGE_FRACTION))


@dataclass
class OptimizerRows(Rows):
    """What an update rule keeps per network, apart from the trainer's clock: its seed (the draws of
    mini-batches and label noise), its option values by name (the stepper's ``per_network`` options:
    momentum, betas, ...), and its own buffers, one tensor per layer, by name (a velocity, moments)."""

    seed: Tensor  # (b,) int64
    options: dict[str, Tensor] = field(default_factory=dict)
    buffers: dict[str, list[Tensor]] = field(default_factory=dict)


@dataclass
class Average(Rows):
    """A stochastic run's average of its last iterates: the first step of its window, the window's length,
    and the running sums of W_t, one per layer."""

    start: Tensor  # (b,) int64
    count: Tensor  # (b,)
    sums: list[Tensor]


class FirstOrder(Stepper):
    options: ClassVar[tuple[str, ...]] = ("check_every", "explode")
    stochastic: ClassVar[bool] = False

    def __init__(self, *, check_every: int = 100, explode: float = EXPLODE, **values):
        super().__init__()
        self.check_every = check_int("check_every", check_every, minimum=0)
        self.explode = float(explode)
        self.values = {name: self.check(name, np.asarray(v, dtype=float)) for name, v in values.items()}

    @classmethod
    def check(cls, name: str, value: np.ndarray) -> np.ndarray:
        """``value`` of the per-network option ``name``, or a ValueError naming it."""
        return value

    # -- what an optimizer defines -----------------------------------------------------------------

    def setup(self, state) -> None:
        """Its own buffers, into ``self.opt.buffers`` (the batch is full)."""

    def update_(self, state, grads, step) -> None:
        """Move ``state.layers`` in place by gradients ``grads`` (finite), step sizes ``step`` (b,),
        0 for frozen networks (whose weights must not change)."""
        raise NotImplementedError

    def precond(self, state):
        """The diagonal preconditioner P of each live row (b, P), where the optimizer has one."""
        return None

    def gradient(self, state):
        """(∂R/∂W_k, R) at the live rows' point: the full-batch gradient by default."""
        grads, excess = state.arch.gradient(state.layers, state.c, state.prob)
        return grads, excess + state.prob.loss_opt

    # -- the loop ----------------------------------------------------------------------------------

    def start(self, state, schedule: Schedule) -> None:
        B, dev, dtype = state.size, state.idx.device, state.layers[0].dtype
        self.record_index = {int(t): j for j, t in enumerate(schedule.record_steps)}
        self.finish_steps = {int(s) for s in np.unique(schedule.steps)}
        self.T_max, self.t = int(schedule.steps.max()), 0
        if schedule.seed is None and self.stochastic:
            raise ValueError(f"{self.name}: the mini-batches and label noise are drawn from each network's seed, "
                             "and the schedule has none")
        seed = np.zeros(B, dtype=np.int64) if schedule.seed is None else schedule.seed  # not read: no draws
        self.opt = OptimizerRows(seed=torch.tensor(seed, dtype=torch.int64, device=dev),
                                 options={name: torch.tensor(v, dtype=dtype, device=dev)
                                          for name, v in self.values.items()})
        self.out: dict[str, Any] = {}
        self.avg = None
        if self.stochastic:
            K = tail_length(schedule.steps)
            self.avg = Average(start=torch.tensor(schedule.steps - K, device=dev),
                               count=torch.tensor(K, dtype=dtype, device=dev),
                               sums=[torch.zeros_like(W) for W in state.layers])
            for k, W in enumerate(state.layers):
                self.out[f"avg_W{k}"] = torch.full(W.shape, float("nan"), dtype=torch.float64, device=dev)
            for name in ("loss_train_avg", "loss_test_avg", "distance_avg"):
                self.out[name] = torch.full((B,), float("nan"), dtype=torch.float64, device=dev)
        self.setup(state)
        loss0 = self.full_loss(state) if self.stochastic else self.gradient(state)[1]
        state.evaluated()
        self.rows = Progress.start(state, schedule, loss0, self.explode)
        state.attach(*(r for r in (self.rows, self.opt, self.avg) if r is not None))
        log.info("%s %s: the torch path (this optimizer has no compiled step)", self.name, state.label)

    def full_loss(self, state):
        """The training loss of the live rows on all samples (the loss the trajectories record)."""
        return state.arch.loss(state.layers, state.c, state.prob)

    def advance(self, state) -> bool:
        t, r = self.t, self.rows
        grads, value = self.gradient(state)
        state.evaluated()
        r.check_(value)
        if t in self.record_index or t in self.finish_steps:
            full = self.full_loss(state) if self.stochastic else value
            r.check_(full)
            if t in self.record_index:
                state.record(r.alive & (r.steps >= t), self.record_index[t], full, precond=self.precond(state))
            if t in self.finish_steps:
                done = r.steps == t
                self._retire(state, done, full)
                if t == self.T_max:
                    return False
                state.compact(~done)
                grads = [G[~done] for G in grads]
                if state.size == 0:
                    return False
        r.alive_steps += r.alive
        self.update_(state, [G.nan_to_num() for G in grads], torch.where(r.alive, r.lr, 0.0))
        if self.avg is not None:  # the sum of the iterates W_{t+1} in each network's last window
            inside = (r.alive & (t + 1 > self.avg.start) & (t + 1 <= r.steps))[:, None, None]
            for S, W in zip(self.avg.sums, state.layers):
                S += torch.where(inside, W, 0.0)
        state.progress(state.size, lambda rate: self._message(state, rate))
        if self.check_every and t % self.check_every == 0 and not bool(r.alive.all()):
            gone = ~r.alive
            self._retire(state, gone, self.full_loss(state))
            state.compact(~gone)
        self.t += 1
        return state.size > 0

    def _retire(self, state, done, value) -> None:
        """Copy out the rows ``done`` (diverged ones frozen where they stopped)."""
        r = self.rows
        state.retire(done, value, diverged=~r.alive, at=r.alive_steps)
        gi = state.idx[done]
        if "precond" in self.out:  # allocated by an optimizer with a preconditioner, (B, P)
            self.out["precond"][gi] = self.precond(state)[done].to(torch.float64)
        if self.avg is None:
            return
        ok = r.alive[done]
        count = self.avg.count[done][:, None, None]
        avg = [torch.where(ok[:, None, None], S[done] / count, float("nan")) for S in self.avg.sums]
        for k, A in enumerate(avg):
            self.out[f"avg_W{k}"][gi] = A.to(torch.float64)
        c, prob = state.c[done], state.prob.rows(done)
        w = state.arch.regressor(avg, c)
        self.out["loss_train_avg"][gi] = state.arch.loss(avg, c, prob).to(torch.float64)
        self.out["loss_test_avg"][gi] = state.arch.test_loss(avg, c, prob, w).to(torch.float64)
        self.out["distance_avg"][gi] = distance(w, prob).to(torch.float64)

    def outputs(self) -> dict[str, np.ndarray]:
        return {name: v.cpu().numpy() for name, v in self.out.items()}

    def _message(self, state, rate: float) -> str:
        remaining = int(np.clip(self.rows.steps.cpu().numpy() - (self.t + 1), 0, None).sum())
        return (f"{self.name} {state.label}: step {self.t + 1}/{self.T_max}, {state.size} networks active, "
                f"{rate:.3g} network-steps/s, ETA <= {remaining / max(rate, 1e-9):.0f} s")
