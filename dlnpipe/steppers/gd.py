"""Full-batch gradient descent, W ← W − η ∇R, each network with its own η and step count (docs/theory.md#architectures).

Every step is a handful of batched kernels, with no host round trip: networks that diverge are
frozen by masks on the device (the rules of :mod:`dlnpipe.steppers.base`), networks that reach their
own step count leave the batch. Every
``check_every`` steps, frozen networks leave too, and so do networks at a fixed point of the GD map
(``exit_fixed``): a step that changes none of their weights, bit for bit, proves that no later
step would either, so their result is exactly that of running all the steps.

Whether a batch's steps go through a compiled kernel is decided once, when it starts
(``Architecture.fused_steps``: the compiled GELU, ReLU and linear steps on the CPU), logged once and
recorded (:attr:`~dlnpipe.steppers.base.Stepper.path`). With a kernel, the torch path evaluates only
the steps that end a network's run (and, with sharpness trajectories, those that record); the kernel takes
every span of steps between them in one call, through the next check at most: it says which networks its
last step moved, which is the check. A recording step is the first of a span: its training and test losses
are those the kernel computes for that step (and its check; a linear net's test loss is its regressor's,
taken with the distance just before the span).
"""

from __future__ import annotations

import logging
from types import MappingProxyType

import numpy as np

from dlnpipe._checks import check_int
from dlnpipe.lazy import torch
from dlnpipe.status import TrainPath
from dlnpipe.steppers.base import EXPLODE, Progress, Schedule, Stepper

log = logging.getLogger("dlnpipe.training")


class GradientDescent(Stepper):
    name = "gd"
    options = ("check_every", "exit_fixed", "explode", "label_noise")
    per_network = MappingProxyType({"label_noise": ()})  # given: the run is SGD's with the whole batch
    defaults = MappingProxyType({"label_noise": 0.0, "batch_size": None})  # full batch: n

    @classmethod
    def variant(cls, given: dict):
        """With ``label_noise``, GD is mini-batch SGD with the whole batch (:mod:`dlnpipe.steppers.sgd`)."""
        if given.get("label_noise") is None:
            return cls
        from dlnpipe.steppers.sgd import SGD

        return SGD

    def __init__(self, *, check_every: int = 100, exit_fixed: bool = True, explode: float = EXPLODE,
                 label_noise=None):
        super().__init__()
        self.check_every = check_int("check_every", check_every, minimum=0)
        self.exit_fixed, self.explode = bool(exit_fixed), float(explode)

    def start(self, state, schedule: Schedule) -> None:
        self.record_steps = schedule.record_steps
        self.record_index = {int(t): j for j, t in enumerate(schedule.record_steps)}
        self.finish_steps = {int(s) for s in np.unique(schedule.steps)}
        self.T_max, self.t = int(schedule.steps.max()), 0
        loss0 = state.arch.evaluate(state.layers, state.c, state.prob).value
        state.evaluated()
        self.rows = Progress.start(state, schedule, loss0, self.explode)
        state.attach(self.rows)
        # one decision for the batch: the compiled step takes every span between events, or none
        self.fused, why = state.arch.fused_steps(state.layers, state.c, state.prob)
        self.path = TrainPath.COMPILED if self.fused is not None else TrainPath.TORCH
        log.info("train %s: %s", state.label, "the compiled kernel takes the steps between recordings"
                 if self.fused is not None else f"the torch path ({why})")
        # the steps the torch path evaluates before taking them: a network's last step, and recording steps
        # when the sharpness is sampled (the kernel records the others as the first step of a span)
        torch_steps = self.finish_steps | (set(self.record_index) if state.sharpness is not None else set())
        self.events = np.array(sorted(torch_steps), dtype=np.int64)
        self.kernel_records = np.array(sorted(set(self.record_index) - torch_steps), dtype=np.int64)

    def _span_end(self) -> int:
        """Where the span of steps the compiled kernel takes from t ends (exclusive): at the next event, which
        the torch path evaluates, before the next recording step after t (the first step of the next span),
        and at the latest just after the next check step (the check reads which networks the span's last
        step moved)."""
        t = self.t
        end = int(self.events[np.searchsorted(self.events, t)])
        later = np.searchsorted(self.kernel_records, t, side="right")
        if later < self.kernel_records.size:
            end = min(end, int(self.kernel_records[later]))
        return min(end, t + (-t) % self.check_every + 1) if self.check_every else end

    def _fused_span(self, state, end: int) -> None:
        """Steps t .. end − 1 by the compiled kernel, then the check if the last of them is a check step. If t
        is a recording step, the sample is W_t's: its training loss (and test loss, where the kernel computes
        it) the kernel's for the span's first step, the regressor (the distance; a linear net's test loss)
        taken before the span."""
        r, count, t = self.rows, end - self.t, self.t
        j = self.record_index.get(t)
        w = state.arch.regressor(state.layers, state.c) if j is not None else None  # at W_t, before the span
        alive = r.alive.clone() if j is not None else r.alive  # before the first step's check
        value, moved, first, test = self.fused(state.layers, state.c, state.prob, lr=r.lr, alive=r.alive,
                                               alive_steps=r.alive_steps, cap=r.cap, count=count, test=w is not None)
        state.evaluated(count)
        if w is not None and j is not None:  # those the first step's check froze are not sampled
            due = alive & (first <= r.cap) & (r.steps >= t)
            if bool(due.any()):
                state.store(due, j, state.observe(due, first, w=w, test=test))
        state.progress(count * state.size, lambda rate: self._message(state, rate))
        last, self.t = end - 1, end
        if self.check_every and last % self.check_every == 0:
            self._leave(state, value, r.alive & ~moved if self.exit_fixed else None, last)

    def advance(self, state) -> bool:
        if self.fused is not None and (end := self._span_end()) > self.t:
            self._fused_span(state, end)
            return state.size > 0
        t, r = self.t, self.rows
        ev = state.arch.evaluate(state.layers, state.c, state.prob)
        state.evaluated()
        r.check_(ev.value)
        if t in self.record_index:
            state.record(r.alive & (r.steps >= t), self.record_index[t], ev.value)
        if t in self.finish_steps:
            done = r.steps == t
            state.retire(done, ev.value, diverged=~r.alive, at=r.alive_steps)
            if t == self.T_max:
                return False
            state.compact(~done)
            ev = ev.take(~done)
            if state.size == 0:
                return False
        r.alive_steps += r.alive
        check = self.check_every and t % self.check_every == 0
        before = [W.clone() for W in state.layers] if check and self.exit_fixed else None
        state.arch.descend_(state.layers, ev, r.lr, r.alive)
        state.progress(state.size, lambda rate: self._message(state, rate))
        if check:
            fixed = None
            if before is not None:  # this step changed none of the weights
                same = torch.stack([(a == b).flatten(1).all(1) for a, b in zip(before, state.layers)]).all(0)
                fixed = r.alive & same
            self._leave(state, ev.value, fixed, t)
        self.t += 1
        return state.size > 0

    def _leave(self, state, value, fixed, step: int) -> None:
        """After step ``step``: retire frozen (diverged) networks and those at a fixed point of the GD map
        (``fixed``: that step changed none of their weights, bit for bit); a fixed point's later samples
        repeat its values."""
        r = self.rows
        fixed = torch.zeros_like(r.alive) if fixed is None else fixed
        gone = fixed | ~r.alive
        if not bool(gone.any()):
            return
        steps = torch.as_tensor(self.record_steps, device=state.idx.device)
        hold = fixed[gone][:, None] & (steps > step)[None, :] & (steps[None, :] <= r.steps[gone][:, None])
        state.retire(gone, value, diverged=~r.alive, at=r.alive_steps, hold=hold)
        state.compact(~gone)

    def _message(self, state, rate: float) -> str:
        remaining = int(np.clip(self.rows.steps.cpu().numpy() - (self.t + 1), 0, None).sum())
        return (f"train {state.label}: step {self.t + 1}/{self.T_max}, {state.size} networks active, "
                f"{rate:.3g} network-steps/s, ETA <= {remaining / max(rate, 1e-9):.0f} s")
