"""Full-batch gradient descent, W ← W − η ∇R, each network with its own η and step count (docs/theory.md#architectures).

Every step is a handful of batched kernels, with no host round trip: networks that diverge are
frozen by masks on the device (η = 0 from the step where the loss becomes non-finite or exceeds
``explode``·max(R(0), yᵀy/n)), networks that reach their own step count leave the batch. Every
``check_every`` steps, frozen networks leave too, and so do networks at a fixed point of the GD map
(``exit_fixed``): a step that changes none of their weights, bit for bit, proves that no later
step would either, so their result is exactly that of running all the steps.

Between the steps that record or end a network's run, an architecture with a fused step
(``Architecture.steps_``, e.g. the compiled GELU step) takes all the steps in one call, through the
next check: the fused step says which networks its last step moved, which is the check.
"""

from __future__ import annotations

import numpy as np

from dlnpipe._checks import check_int
from dlnpipe.lazy import torch
from dlnpipe.steppers.base import Schedule, Stepper


class GradientDescent(Stepper):
    name = "gd"
    options = ("check_every", "exit_fixed", "explode", "label_noise")
    per_network = {"label_noise": ()}  # given: the run is SGD's with the whole batch
    defaults = {"label_noise": 0.0}

    @classmethod
    def variant(cls, given: dict):
        """With ``label_noise``, GD is mini-batch SGD with the whole batch (:mod:`dlnpipe.steppers.sgd`)."""
        if given.get("label_noise") is None:
            return cls
        from dlnpipe.steppers.sgd import SGD

        return SGD

    def __init__(self, *, check_every: int = 100, exit_fixed: bool = True, explode: float = 1e6, label_noise=None):
        self.check_every = check_int("check_every", check_every, minimum=0)
        self.exit_fixed, self.explode = bool(exit_fixed), float(explode)

    def start(self, state, schedule: Schedule) -> None:
        dev, dtype = state.idx.device, state.layers[0].dtype
        self.record_steps = schedule.record_steps
        self.record_index = {int(t): j for j, t in enumerate(schedule.record_steps)}
        self.finish_steps = {int(s) for s in np.unique(schedule.steps)}
        self.T_max, self.t = int(schedule.steps.max()), 0
        # the steps that must be evaluated before they are taken: recording, a network's last step, the first
        self.events = np.array(sorted(set(self.record_index) | self.finish_steps | {0, self.T_max}), dtype=np.int64)
        state.rows.update(lr=torch.tensor(schedule.lr, dtype=dtype, device=dev),
                          steps=torch.tensor(schedule.steps, device=dev),
                          alive=torch.ones(state.size, dtype=torch.bool, device=dev),
                          alive_steps=torch.zeros(state.size, dtype=torch.int64, device=dev))  # = divergence step

    def _fused(self, state) -> bool:
        """The steps up to the next event, and through the next check, in one fused call (where there is one)."""
        t, r = self.t, state.rows
        end = int(self.events[np.searchsorted(self.events, t)])  # the next event: evaluated by the torch path
        if self.check_every:
            end = min(end, t + (-t) % self.check_every + 1)  # up to and including the next check step
        if end <= t:
            return False
        fused = state.arch.steps_(state.layers, state.c, state.prob, lr=r["lr"], alive=r["alive"],
                                  alive_steps=r["alive_steps"], cap=r["cap"], count=end - t)
        if fused is None:
            return False
        value, moved = fused
        state.progress((end - t) * state.size, lambda rate: self._message(state, rate))
        self.t = end - 1
        if self.check_every and self.t % self.check_every == 0:
            self._leave(state, value, r["alive"] & ~moved if self.exit_fixed else None)
        self.t = end
        return True

    def advance(self, state) -> bool:
        if self._fused(state):
            return state.size > 0
        t, r = self.t, state.rows
        ev = state.arch.evaluate(state.layers, state.c, state.prob)
        if "cap" not in r:  # divergence: the loss beyond explode·max(R(0), yᵀy/n)
            yty = torch.as_tensor(state.prob.yty, dtype=ev.value.dtype, device=ev.value.device)
            r["cap"] = self.explode * torch.maximum(ev.value.abs(), yty)
        r["alive"] &= ev.value <= r["cap"]  # False for NaN and inf too: the network is frozen at this point
        if t in self.record_index:
            state.record(r["alive"] & (r["steps"] >= t), self.record_index[t], ev.value)
        if t in self.finish_steps:
            done = r["steps"] == t
            state.retire(done, ev.value, diverged=~r["alive"], at=r["alive_steps"])
            if t == self.T_max:
                return False
            state.compact(~done)
            ev = ev.take(~done)
            if state.size == 0:
                return False
        r = state.rows
        r["alive_steps"] += r["alive"]
        check = self.check_every and t % self.check_every == 0
        before = [W.clone() for W in state.layers] if check and self.exit_fixed else None
        state.arch.descend_(state.layers, ev, r["lr"], r["alive"])
        state.progress(state.size, lambda rate: self._message(state, rate))
        if check:
            fixed = None
            if before is not None:  # this step changed none of the weights
                same = torch.stack([(a == b).flatten(1).all(1) for a, b in zip(before, state.layers)]).all(0)
                fixed = r["alive"] & same
            self._leave(state, ev.value, fixed)
        self.t += 1
        return state.size > 0

    def _leave(self, state, value, fixed) -> None:
        """Retire frozen (diverged) networks and those at a fixed point of the GD map (``fixed``: this step
        changed none of their weights, bit for bit); a fixed point's later samples repeat its values."""
        r = state.rows
        fixed = torch.zeros_like(r["alive"]) if fixed is None else fixed
        gone = fixed | ~r["alive"]
        if not bool(gone.any()):
            return
        steps = torch.as_tensor(self.record_steps, device=state.idx.device)
        hold = fixed[gone][:, None] & (steps > self.t)[None, :] & (steps[None, :] <= r["steps"][gone][:, None])
        state.retire(gone, value, diverged=~r["alive"], at=r["alive_steps"], hold=hold)
        state.compact(~gone)

    def _message(self, state, rate: float) -> str:
        remaining = int(np.clip(state.rows["steps"].cpu().numpy() - (self.t + 1), 0, None).sum())
        return (f"train {state.label}: step {self.t + 1}/{self.T_max}, {state.size} networks active, "
                f"{rate:.3g} network-steps/s, ETA <= {remaining / max(rate, 1e-9):.0f} s")
