"""Gradient flow dW/dt = −∇R(W) for a batch of networks, by an adaptive error-controlled solver.

The theorem of PAPER.md §3.3–3.4 is about gradient *flow*; GD with a small η is only a proxy.
This integrates the flow itself with the Dormand–Prince 5(4) pair (the embedded error estimate
of ``scipy.integrate.RK45``), one step size per network: a step is accepted when the scaled error
    err = rms( (y₅ − y₄) / (atol + rtol·max(|y|, |y_new|)) ) ≤ 1,
and the next step is h·clip(0.9·err^(−1/5), 0.2, 5). Every network of the batch takes its own
step at the same time (one batched gradient per stage), leaves the batch when it reaches its
time horizon or when its excess loss R − R* falls below ``stop`` (the flow has then converged
to within far less than the convergence test), and is frozen if its loss becomes non-finite.

Times: network b is integrated to T_b; trajectory samples are taken at ``record_times`` exactly
(steps are shortened to land on them). In the workflow a run's (lr, steps) gives T = lr·steps,
the time that GD with step lr covers, and samples at lr·record_steps.
"""

from __future__ import annotations

import numpy as np
import torch

from dlnpipe.objective import (
    Problem,
    distance,
    flatten,
    gelu_loss_and_grad,
    gelu_test_loss,
    linear_grad_and_excess,
    regressor,
    test_loss,
    unflatten,
)

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


class FlowState:
    """The batch's parameters as flat rows (B, P) and the vector field −∇R on them."""

    def __init__(self, layers: list[torch.Tensor], prob: Problem, arch: str):
        self.like, self.prob, self.arch = layers, prob, arch

    def field(self, y: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(−∇R(y), R(y) − R*) for the rows of y (the active networks, aligned with ``self.prob``)."""
        layers = unflatten(y, self.like)
        if self.arch == "gelu":
            value, grads = gelu_loss_and_grad(layers, self.prob)
            return -flatten(grads), value - self.prob.loss_opt
        grads, excess = linear_grad_and_excess(layers, c, self.prob)
        return -flatten(grads), excess

    def observe(self, y: torch.Tensor, c: torch.Tensor, excess: torch.Tensor, rows: torch.Tensor):
        """Train loss, test loss and distance of the active networks selected by ``rows``."""
        prob = self.prob.rows(rows)
        layers = unflatten(y[rows], self.like)
        w = regressor(layers, c[rows])
        loss_opt = prob.loss_opt
        test = gelu_test_loss(layers, prob) if self.arch == "gelu" else test_loss(w, prob)
        return {"loss_train": excess[rows] + loss_opt, "loss_test": test, "distance": distance(w, prob)}


def integrate(layers: list[torch.Tensor], c: torch.Tensor, prob: Problem, arch: str, *, horizon: np.ndarray,
              record_times: np.ndarray, rtol: float = 1e-8, atol: float = 1e-10, stop=0.0,
              explode: float = 1e6, max_steps: int = 100_000):
    """Integrate the flow of every network to its ``horizon`` (B,); ``stop`` (scalar or (B,)) ends a
    network early once R − R* ≤ stop, and once it has taken ``max_steps`` accepted steps (a stiff
    trajectory, e.g. from a large init: it is then reported where it stopped). Returns a dict of tensors:
    ``y`` final flat parameters (B, P), ``traj`` {loss_train, loss_test, distance} on record_times
    (NaN after a network's horizon or divergence), ``final`` the same at the end, ``diverged_at``
    (time of divergence or NaN), ``t_end`` the time reached, ``steps`` accepted steps, ``evals`` the
    number of batched vector-field evaluations."""
    dev = layers[0].device
    state = FlowState(layers, prob, arch)
    B = layers[0].shape[0]
    y = flatten(layers).clone()
    T = torch.as_tensor(horizon, dtype=y.dtype, device=dev)
    rec = torch.as_tensor(np.asarray(record_times, dtype=float), dtype=y.dtype, device=dev)
    rec = rec.expand(B, rec.shape[-1]).contiguous() if rec.ndim == 1 else rec  # (B, nT): per-network times
    nT = rec.shape[1]
    traj = {k: torch.full((B, nT), float("nan"), dtype=torch.float64, device=dev)
            for k in ("loss_train", "loss_test", "distance")}
    final = {k: torch.full((B,), float("nan"), dtype=torch.float64, device=dev) for k in traj}
    y_out = torch.empty_like(y)
    diverged_at = torch.full((B,), float("nan"), dtype=torch.float64, device=dev)
    t_end = torch.zeros(B, dtype=torch.float64, device=dev)
    n_steps = torch.zeros(B, dtype=torch.int64, device=dev)

    idx = torch.arange(B, device=dev)
    t = torch.zeros(B, dtype=y.dtype, device=dev)
    cb = c
    f, excess = state.field(y, cb)
    cap = explode * torch.maximum(excess.abs() + prob.loss_opt, torch.as_tensor(prob.yty, dtype=y.dtype, device=dev))
    stop = torch.as_tensor(stop, dtype=y.dtype, device=dev).expand(B).clone()
    nxt = torch.zeros(B, dtype=torch.int64, device=dev)  # index of the next record time
    # initial step (Hairer, Nørsett & Wanner II.4): h0 = 0.01·‖y‖/‖f‖ in the scaled norm, at most T
    sc = atol + rtol * y.abs()
    d0, d1 = _rms(y / sc), _rms(f / sc)
    h = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    h = torch.minimum(h, T).clamp(min=1e-12)
    evals = 1

    def next_time():
        """Each active network's next record time (+inf when none is left)."""
        at = rec.gather(1, nxt.clamp(max=nT - 1)[:, None])[:, 0]
        return torch.where(nxt < nT, at, torch.full_like(at, float("inf")))

    def take_records(rows: torch.Tensor):
        """Sample the networks in ``rows`` (active positions) whose next record time is reached."""
        nonlocal nxt
        due = rows & (t >= next_time() * (1 - 1e-12))
        while bool(due.any()):
            obs = state.observe(y, cb, excess, due)
            gi, j = idx[due], nxt[due]
            for k, v in obs.items():
                traj[k][gi, j] = v.to(torch.float64)
            nxt = torch.where(due, nxt + 1, nxt)
            due = due & (t >= next_time() * (1 - 1e-12))

    def retire(done: torch.Tensor, frozen: torch.Tensor):
        """Copy out the networks in ``done``; ``frozen`` ones diverged (their time is recorded)."""
        nonlocal y, f, excess, t, h, T, idx, cb, cap, nxt, rec, stop
        gi = idx[done]
        y_out[gi] = y[done]
        obs = state.observe(y, cb, excess, done)
        for k, v in obs.items():
            final[k][gi] = v.to(torch.float64)
        t_end[gi] = t[done].to(torch.float64)
        diverged_at[gi] = torch.where(frozen[done], t[done].to(torch.float64), diverged_at[gi])
        # networks that stopped early because they converged keep their final state at later record times
        r = rec[done]
        later = (r > t[done][:, None] * (1 + 1e-12)) & (r <= T[done][:, None] * (1 + 1e-12))
        conv = (excess[done] <= stop[done]) & ~frozen[done]
        for k, v in obs.items():
            traj[k][gi] = torch.where(later & conv[:, None], v.to(torch.float64)[:, None], traj[k][gi])
        keep = ~done
        y, f, excess, t, h, T, idx, cb, cap, nxt, rec, stop = (
            x[keep] for x in (y, f, excess, t, h, T, idx, cb, cap, nxt, rec, stop))
        state.prob = state.prob.rows(keep)

    take_records(torch.ones_like(t, dtype=torch.bool))
    while True:
        # leave the batch: at the horizon, converged to `stop`, or diverged (frozen where it is)
        bad = ~torch.isfinite(excess) | (excess > cap)
        done = (t >= T * (1 - 1e-14)) | (excess <= stop) | bad | (n_steps[idx] >= max_steps)
        if bool(done.any()):
            retire(done, frozen=bad)
            if idx.numel() == 0:
                break
        # do not step over the horizon or the next record time
        target = torch.minimum(next_time(), T)
        h = torch.minimum(h, target - t).clamp(min=1e-14)
        k = [f]
        for s in range(1, 6):
            ys = y + h[:, None] * sum(a * ki for a, ki in zip(_A[s], k))
            k.append(state.field(ys, cb)[0])
        y5 = y + h[:, None] * sum(b * ki for b, ki in zip(_B5, k) if b)
        f5, ex5 = state.field(y5, cb)
        k.append(f5)
        evals += 6
        err_vec = h[:, None] * sum(e * ki for e, ki in zip(_E, k) if e)
        scale = atol + rtol * torch.maximum(y.abs(), y5.abs())
        err = _rms(err_vec / scale)
        ok = (err <= 1.0) & torch.isfinite(err)
        okc = ok[:, None]
        y = torch.where(okc, y5, y)
        f = torch.where(okc, f5, f)
        excess = torch.where(ok, ex5, excess)
        t = torch.where(ok, t + h, t)
        n_steps[idx] += ok.to(torch.int64)
        factor = torch.where(torch.isfinite(err), 0.9 * err.clamp(min=1e-10) ** -0.2, torch.full_like(err, 0.2))
        h = h * factor.clamp(0.2, 5.0)
        if bool(ok.any()):
            take_records(ok)
    return {"y": y_out, "traj": traj, "final": final, "diverged_at": diverged_at, "t_end": t_end,
            "steps": n_steps, "evals": evals}


def _rms(x: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((x * x).mean(dim=1))
