"""What the explicit optimizers beyond plain GD share (heavy ball, Adam, mini-batch SGD, label noise).

Each step takes one gradient per network: of the full training loss, or (:mod:`dlnpipe.steppers.sgd`)
of a mini-batch with noisy labels, and hands it to the optimizer's update rule, which keeps its own
per-network tensors (a velocity, moment estimates) in the batch's rows. Everything else is the
trainer's, as for GD: a network whose loss becomes non-finite or exceeds ``explode``·max(R(0), yᵀy/n)
is frozen where it is (its optimizer state too) and leaves at the next check; a network leaves the
batch after its own step count; samples are the full training and test losses at W_t.

Stochastic runs (mini-batches or label noise) keep fluctuating at a constant step size unless they
interpolate (n < d: every mini-batch loss is zero at the same minimizers, and SGD without label
noise converges there), so they are reported twice: at their *last iterate* (the weights, losses,
status and every Hessian measurement, as for GD) and at the *average of their last iterates* (the
mean of the weights W_t over the last ⌈steps/10⌉ steps, with its losses, ``*_avg``).
"""

from __future__ import annotations

import numpy as np

from dlnpipe._checks import check_int
from dlnpipe.lazy import torch
from dlnpipe.problem import distance
from dlnpipe.steppers.base import Schedule, Stepper

AVERAGE_FRACTION = 10  # stochastic runs: the average of the last ⌈steps / AVERAGE_FRACTION⌉ iterates


def tail_length(steps):
    """How many last iterates a stochastic run averages: ⌈steps / 10⌉, at least 1."""
    return np.maximum(1, -(-np.asarray(steps, dtype=np.int64) // AVERAGE_FRACTION))


class FirstOrder(Stepper):
    options = ("check_every", "explode")
    stochastic = False

    def __init__(self, *, check_every: int = 100, explode: float = 1e6, **values):
        self.check_every = check_int("check_every", check_every, minimum=0)
        self.explode = float(explode)
        self.values = {name: self.check(name, np.asarray(v, dtype=float)) for name, v in values.items()}

    @classmethod
    def check(cls, name: str, value: np.ndarray) -> np.ndarray:
        """``value`` of the per-network option ``name``, or a ValueError naming it."""
        return value

    # -- what an optimizer defines -----------------------------------------------------------------

    def setup(self, state) -> None:
        """Its per-network tensors, into ``state.rows`` (the batch is full)."""

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
        seed = np.zeros(B, dtype=np.int64) if schedule.seed is None else schedule.seed
        state.rows.update(lr=torch.tensor(schedule.lr, dtype=dtype, device=dev),
                          steps=torch.tensor(schedule.steps, device=dev),
                          seed=torch.tensor(seed, dtype=torch.int64, device=dev),
                          alive=torch.ones(B, dtype=torch.bool, device=dev),
                          alive_steps=torch.zeros(B, dtype=torch.int64, device=dev))
        for name, value in self.values.items():
            state.rows[name] = torch.tensor(value, dtype=dtype, device=dev)
        self.out = {}
        if self.stochastic:
            K = tail_length(schedule.steps)
            state.rows["avg_from"] = torch.tensor(schedule.steps - K, device=dev)
            state.rows["avg_count"] = torch.tensor(K, dtype=dtype, device=dev)
            for k, W in enumerate(state.layers):
                state.rows[f"avg{k}"] = torch.zeros_like(W)
                self.out[f"avg_W{k}"] = torch.full(W.shape, float("nan"), dtype=torch.float64, device=dev)
            for name in ("loss_train_avg", "loss_test_avg", "distance_avg"):
                self.out[name] = torch.full((B,), float("nan"), dtype=torch.float64, device=dev)
        self.setup(state)

    def full_loss(self, state):
        """The training loss of the live rows on all samples (the loss the trajectories record)."""
        return state.arch.loss(state.layers, state.c, state.prob)

    def advance(self, state) -> bool:
        t, r = self.t, state.rows
        grads, value = self.gradient(state)
        if "cap" not in r:  # divergence: the loss beyond explode·max(R(0), yᵀy/n)
            full0 = self.full_loss(state) if self.stochastic else value
            yty = torch.as_tensor(state.prob.yty, dtype=value.dtype, device=value.device)
            r["cap"] = self.explode * torch.maximum(full0.abs(), yty)
        r["alive"] &= value <= r["cap"]  # False for NaN and inf too: the network is frozen at this point
        if t in self.record_index or t in self.finish_steps:
            full = self.full_loss(state) if self.stochastic else value
            r["alive"] &= full <= r["cap"]
            if t in self.record_index:
                state.record(r["alive"] & (r["steps"] >= t), self.record_index[t], full, precond=self.precond(state))
            if t in self.finish_steps:
                done = r["steps"] == t
                self._retire(state, done, full)
                if t == self.T_max:
                    return False
                state.compact(~done)
                grads = [G[~done] for G in grads]
                if state.size == 0:
                    return False
        r = state.rows
        r["alive_steps"] += r["alive"]
        self.update_(state, [G.nan_to_num() for G in grads], torch.where(r["alive"], r["lr"], 0.0))
        if self.stochastic:  # the sum of the iterates W_{t+1} in each network's last window
            inside = (r["alive"] & (t + 1 > r["avg_from"]) & (t + 1 <= r["steps"]))[:, None, None]
            for k, W in enumerate(state.layers):
                r[f"avg{k}"] += torch.where(inside, W, 0.0)
        state.progress(state.size, lambda rate: self._message(state, rate))
        if self.check_every and t % self.check_every == 0 and not bool(r["alive"].all()):
            gone = ~r["alive"]
            self._retire(state, gone, self.full_loss(state))
            state.compact(~gone)
        self.t += 1
        return state.size > 0

    def _retire(self, state, done, value) -> None:
        """Copy out the rows ``done`` (diverged ones frozen where they stopped)."""
        r = state.rows
        state.retire(done, value, diverged=~r["alive"], at=r["alive_steps"])
        gi = state.idx[done]
        if "precond" in self.out:  # allocated by an optimizer with a preconditioner, (B, P)
            self.out["precond"][gi] = self.precond(state)[done].to(torch.float64)
        if not self.stochastic:
            return
        ok = r["alive"][done]
        avg = [torch.where(ok[:, None, None], r[f"avg{k}"][done] / r["avg_count"][done][:, None, None], float("nan"))
               for k in range(len(state.layers))]
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
        remaining = int(np.clip(state.rows["steps"].cpu().numpy() - (self.t + 1), 0, None).sum())
        return (f"{self.name} {state.label}: step {self.t + 1}/{self.T_max}, {state.size} networks active, "
                f"{rate:.3g} network-steps/s, ETA <= {remaining / max(rate, 1e-9):.0f} s")
