"""Full-batch gradient descent on a batch of B networks at once (PAPER.md §2, §3.5).

All networks of one call share architecture, depth and width; each has its own learning rate,
init scale, seed and number of steps. The batch is one set of tensors (B, out, in) per layer and
every step is a handful of batched kernels, with no host round trip: networks that diverge are
frozen by masks on the device, networks that reach their own step count leave the batch.

Status of a network at the end (CF flags in the cube):
    0 converged  R − R* ≤ rtol·R* + atol·(yᵀy/n)
    1 failed     finite but not converged (stalled at a saddle, or oscillating above η_c)
    2 diverged   the loss became non-finite or exceeded ``explode``·max(R(0), yᵀy/n); the network is
                 frozen at the first such state and its later trajectory entries are NaN
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from dlnpipe._checks import check_choice, check_int, check_positive
from dlnpipe.data import Dataset
from dlnpipe.networks import Weights, check_network_args, init_network
from dlnpipe.objective import (
    Problem,
    distance,
    gelu_loss_and_grad,
    gelu_test_loss,
    linear_state,
    linear_step_,
    memory_budget,
    regressor,
    resolve_device,
    resolve_dtype,
    stack_weights,
    test_loss,
    unflatten,
)
from dlnpipe.status import CONVERGED, DIVERGED, FAILED, STATUS_MEANINGS  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class TrainResult:
    """Final weights, status and sampled trajectories of B networks (numpy, float64).

    layers[k]: (B, out_k, in_k); p: (B, m) or None; status: (B,) int8 (see module docstring);
    loss_train, loss_test, distance: (B,) at each network's last step; diverged_step: (B,) step of
    divergence or -1. Trajectories on ``record_steps`` (T,): arrays (B, T), NaN after a network's
    own last step or its divergence; ``traj_sharpness`` only when asked for.
    """

    arch: str
    depth: int
    width: int
    d: int
    lr: np.ndarray
    scale: np.ndarray
    seed: np.ndarray
    steps: np.ndarray
    layers: list
    p: np.ndarray | None
    status: np.ndarray
    loss_train: np.ndarray
    loss_test: np.ndarray
    distance: np.ndarray
    diverged_step: np.ndarray
    record_steps: np.ndarray
    traj_loss_train: np.ndarray
    traj_loss_test: np.ndarray
    traj_distance: np.ndarray
    traj_sharpness: np.ndarray | None
    dtype: str
    device: str
    seconds: float

    def __len__(self) -> int:
        return len(self.lr)

    def network(self, i: int) -> Weights:
        arrays = [W[i] for W in self.layers]
        if self.arch == "residual":
            arrays.append(self.p[i])
        return Weights(arrays, arch=self.arch)

    def regressors(self) -> np.ndarray:
        """w_prod of every network, (B, d)."""
        return np.stack([self.network(i).product()[: self.d] for i in range(len(self))])


def _per_network(name, value, B, *, kind=float) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value, dtype=kind))
    if arr.ndim != 1 or arr.size not in (1, B):
        raise ValueError(f"{name} must be a scalar or have one entry per network ({B}), got shape {arr.shape}")
    return np.broadcast_to(arr, (B,)).copy()


def train(dataset: Dataset | list[Dataset], *, arch: str, depth: int, width: int, lr, scale, seed, steps,
          dtype="float64", device="cpu", record_every: int | None = None, record_steps=None,
          record_sharpness: bool = False, rtol: float = 1e-6, atol: float = 1e-7,
          explode: float = 1e6, p_seed: int = 0, log_every_s: float = 10.0,
          sharpness_tol: float = 1e-8, check_every: int = 100, exit_fixed: bool | None = None,
          max_batch: int | None = None, optimizer: str = "gd", flow_rtol: float = 1e-8,
          flow_atol: float = 1e-10, flow_max_steps: int = 100_000) -> TrainResult:
    """Train B networks by full-batch GD; lr, scale, seed, steps are scalars or length-B sequences.

    B is the longest of lr, scale, seed, steps. Records train/test loss and ‖w_prod − w*‖² every
    ``record_every`` steps (default: about 200 points) or at the given ``record_steps``, and the
    Lanczos sharpness there too when ``record_sharpness``.

    Every ``check_every`` steps, networks leave the batch when they are frozen (diverged) or sit at
    a fixed point of the GD map: a step that changes none of their weights, bit for bit, proves
    every later step would not either, so the result is exactly that of running all the steps
    (``exit_fixed``; default on unless sharpness trajectories are recorded).

    ``optimizer="flow"`` integrates gradient flow instead of taking GD steps (dlnpipe.flow): network b
    is integrated to time lr_b·steps_b with error tolerances ``flow_rtol``/``flow_atol`` (at most
    ``flow_max_steps`` accepted steps per network) and recorded at times lr_b·record_steps;
    ``diverged_step`` is then the GD-equivalent step t/lr.

    Networks are trained in batches of at most ``max_batch`` (default: as many as fit in half the
    free memory of a CUDA device, 4 GB on CPU); each network's result does not depend on its batch.

    ``dataset`` is one Dataset for all networks or, for linear nets, a sequence with one Dataset per
    network (same d): networks on different datasets then train in one batch.
    """
    per_data = None if isinstance(dataset, Dataset) else list(dataset)
    if per_data is not None:
        if not per_data or not all(isinstance(x, Dataset) for x in per_data):
            raise ValueError("dataset must be a Dataset or a non-empty sequence of Datasets (one per network)")
        dataset = per_data[0]
        if all(x is dataset for x in per_data):
            per_data = None
    arch, depth, width, d = check_network_args(arch, depth, width, dataset.d)
    B = max(np.size(lr), np.size(scale), np.size(seed), np.size(steps), len(per_data or ()))
    if per_data is not None and len(per_data) != B:
        raise ValueError(f"dataset must have one entry per network ({B}), got {len(per_data)}")
    lr = _per_network("lr", lr, B)
    scale = _per_network("scale", scale, B)
    seed = _per_network("seed", seed, B, kind=np.int64)
    steps = _per_network("steps", steps, B, kind=np.int64)
    for i in range(B):
        check_positive("lr", lr[i])
    if (steps < 0).any():
        raise ValueError(f"steps must be >= 0, got {steps[steps < 0][0]}")
    if not np.isfinite(scale).all() or (scale < 0).any():
        raise ValueError(f"scale must be finite and >= 0, got {scale[~(np.isfinite(scale) & (scale >= 0))][0]}")
    check_positive("rtol", rtol)
    check_positive("explode", explode)
    check_choice("optimizer", optimizer, ("gd", "flow"))
    if optimizer == "flow" and record_sharpness:
        raise ValueError("record_sharpness samples GD trajectories; it is not available with optimizer='flow'")
    check_positive("flow_rtol", flow_rtol)
    check_positive("flow_atol", flow_atol)
    flow_max_steps = check_int("flow_max_steps", flow_max_steps, minimum=1)
    tdtype, dev = resolve_dtype(dtype), resolve_device(device)
    T_max = int(steps.max())
    if record_steps is None:
        every = max(1, T_max // 200) if record_every is None else check_int("record_every", record_every, minimum=1)
        record_steps = np.unique(np.append(np.arange(0, T_max + 1, every), T_max))
    record_steps = np.unique(np.asarray(record_steps, dtype=np.int64))
    if record_steps.size and record_steps[0] < 0:
        raise ValueError(f"record_steps must be >= 0, got {record_steps[0]}")
    record_index = {int(t): j for j, t in enumerate(record_steps)}

    exit_fixed = (not record_sharpness) if exit_fixed is None else bool(exit_fixed)
    if max_batch is None:
        max_batch = max(1, int(memory_budget(dev) // _bytes_per_network(arch, depth, width, d, dataset.n, tdtype)))
    max_batch = check_int("max_batch", max_batch, minimum=1)
    if B > max_batch:
        kwargs = dict(arch=arch, depth=depth, width=width, dtype=dtype, device=device, record_steps=record_steps,
                      record_sharpness=record_sharpness, rtol=rtol, atol=atol, explode=explode, p_seed=p_seed,
                      log_every_s=log_every_s, sharpness_tol=sharpness_tol, check_every=check_every,
                      exit_fixed=exit_fixed, max_batch=max_batch, optimizer=optimizer, flow_rtol=flow_rtol,
                      flow_atol=flow_atol, flow_max_steps=flow_max_steps)
        log.info("train %s L=%d m=%d: %d networks in batches of %d (device memory)", arch, depth, width, B, max_batch)
        parts = [train(dataset if per_data is None else per_data[s], lr=lr[s], scale=scale[s], seed=seed[s],
                       steps=steps[s], **kwargs)
                 for s in (slice(i, i + max_batch) for i in range(0, B, max_batch))]
        return _concatenate(parts)
    t0 = time.monotonic()
    nets = [init_network(arch, depth=depth, width=width, d=d, scale=scale[i], seed=int(seed[i]),
                         p_seed=p_seed) for i in range(B)]
    in_dim = nets[0].layers[0].shape[1]
    if per_data is None:
        prob = Problem.from_dataset(dataset, arch=arch, in_dim=in_dim, dtype=tdtype, device=dev)
    else:
        prob = Problem.stack(per_data, arch=arch, in_dim=in_dim, dtype=tdtype, device=dev)
    data_of = per_data or [dataset] * B
    loss_opt = np.array([x.loss_opt for x in data_of])
    threshold = rtol * loss_opt + atol * np.array([x.yty for x in data_of])  # converged: R − R* ≤ threshold
    layers, c = stack_weights(nets, dtype=tdtype, device=dev)

    if optimizer == "flow":
        return _train_flow(nets, layers, c, prob, arch=arch, depth=depth, width=width, d=d, lr=lr,
                           scale=scale, seed=seed, steps=steps, record_steps=record_steps, loss_opt=loss_opt,
                           threshold=threshold, flow_rtol=flow_rtol, flow_atol=flow_atol, explode=explode,
                           tdtype=tdtype, dev=dev, t0=t0, max_steps=flow_max_steps)

    nT = record_steps.size
    traj = {key: torch.full((B, nT), float("nan"), dtype=torch.float64, device=dev)
            for key in ("loss_train", "loss_test", "distance")}
    traj_sharp = np.full((B, nT), np.nan) if record_sharpness else None
    final = {key: torch.full((B,), float("nan"), dtype=torch.float64, device=dev)
             for key in ("loss_train", "loss_test", "distance")}
    out_layers = [torch.empty_like(W) for W in layers]
    diverged_at = torch.full((B,), -1, dtype=torch.int64, device=dev)

    idx = torch.arange(B, device=dev)  # global index of each row of the active batch
    eta = torch.tensor(lr, dtype=tdtype, device=dev)
    my_steps = torch.tensor(steps, device=dev)
    alive = torch.ones(B, dtype=torch.bool, device=dev)
    alive_steps = torch.zeros(B, dtype=torch.int64, device=dev)  # = divergence step once frozen
    finish_steps = set(int(s) for s in np.unique(steps))
    cap = None
    net_steps_done, last_log = 0, time.monotonic()

    def state():
        """Loss of the current point, and what the update needs (gradient or its factors)."""
        if arch == "gelu":
            value, grads = gelu_loss_and_grad(layers, prob)
            return grads, None, value  # the product of the layers is only needed when recording
        rows, w, g, excess = linear_state(layers, c, prob)
        return (rows, g), w, prob.loss_opt + excess

    def record(j: int, w, value, t: int):
        w = regressor(layers, c) if w is None else w
        due = alive & (my_steps >= t)
        tl = gelu_test_loss(layers, prob) if arch == "gelu" else test_loss(w, prob)
        for key, v in (("loss_train", value), ("loss_test", tl), ("distance", distance(w, prob))):
            traj[key][idx, j] = torch.where(due, v.to(torch.float64), traj[key][idx, j])
        if record_sharpness:
            from dlnpipe.curvature import sharpness  # local import: sharpness imports train

            rows = np.flatnonzero(due.cpu().numpy())
            if rows.size:
                glob = idx.cpu().numpy()[rows]
                snaps = _snapshot(layers, c, arch, rows)
                for group in _by_dataset(data_of, glob):
                    s = sharpness(data_of[glob[group[0]]], [snaps[i] for i in group], method="lanczos",
                                  tol=sharpness_tol, device=dev, seeds=seed[glob[group]])
                    traj_sharp[glob[group], j] = s.values

    def retire(done, w, value, t: int, fixed=None):
        """Copy out the networks in ``done`` (state t); ``fixed`` ones keep their state to the end."""
        w = regressor(layers, c) if w is None else w
        g = idx[done]
        for k, W in enumerate(layers):
            out_layers[k][g] = W[done]
        tl = gelu_test_loss(layers, prob) if arch == "gelu" else test_loss(w, prob)
        current = {"loss_train": value, "loss_test": tl, "distance": distance(w, prob)}
        for key, v in current.items():
            final[key][g] = v[done].to(torch.float64)
        diverged_at[g] = torch.where(alive[done], -1, alive_steps[done])
        if fixed is not None and bool(fixed.any()):
            # A fixed point of the GD map stays put: later trajectory samples repeat the current values.
            later = torch.tensor(record_steps > t, device=dev)[None, :] & (
                torch.tensor(record_steps, device=dev)[None, :] <= my_steps[fixed][:, None])
            gf = idx[fixed]
            for key, v in current.items():
                traj[key][gf] = torch.where(later, v[fixed].to(torch.float64)[:, None], traj[key][gf])

    def compact(keep, update):
        nonlocal layers, c, eta, my_steps, alive, idx, cap, alive_steps, prob
        layers = [W[keep].contiguous() for W in layers]
        prob = prob.rows(keep)
        c, eta, my_steps, alive, idx, cap, alive_steps = (
            x[keep] for x in (c, eta, my_steps, alive, idx, cap, alive_steps))
        if update is None:
            return None
        return [G[keep] for G in update] if arch == "gelu" else ([r[keep] for r in update[0]], update[1][keep])

    for t in range(T_max + 1):
        update, w, value = state()
        if cap is None:
            cap = explode * torch.maximum(value.abs(), torch.as_tensor(prob.yty, dtype=value.dtype, device=dev))
        alive &= value <= cap  # False for NaN and inf too: the network is frozen at this point
        if t in record_index:
            record(record_index[t], w, value, t)
        if t in finish_steps:
            done = my_steps == t
            retire(done, w, value, t)
            if t == T_max:
                break
            update = compact(~done, update)
            w, value = (None if w is None else w[~done]), value[~done]
            if idx.numel() == 0:
                break
        alive_steps += alive
        check = check_every and t % check_every == 0
        before = [W.clone() for W in layers] if check and exit_fixed else None
        # W ← W − η ∇R, with η = 0 (and a zeroed gradient, in case it is not finite) for frozen networks.
        if arch == "gelu":
            step = torch.where(alive, eta, 0.0)[:, None, None]
            for W, G in zip(layers, update):
                W.addcmul_(step, G.nan_to_num_(), value=-1.0)
        else:
            rows, g = update
            linear_step_(layers, rows, torch.where(alive[:, None], eta[:, None] * g, 0.0))
        net_steps_done += idx.numel()
        if check:
            # Leave the batch: frozen (diverged) networks, and networks at a fixed point of the GD map
            # (this step changed none of their weights, bit for bit, so no later step would either).
            fixed = torch.zeros_like(alive)
            if before is not None:
                fixed = alive & torch.stack([(a == b).flatten(1).all(1) for a, b in zip(before, layers)]).all(0)
            gone = fixed | ~alive
            if bool(gone.any()):
                retire(gone, w, value, t, fixed=fixed)
                compact(~gone, None)
                if idx.numel() == 0:
                    break
        if log_every_s is not None and time.monotonic() - last_log >= log_every_s:
            last_log = time.monotonic()
            rate = net_steps_done / (last_log - t0)
            remaining = int(np.clip(my_steps.cpu().numpy() - (t + 1), 0, None).sum())
            log.info("train %s L=%d m=%d: step %d/%d, %d networks active, %.3g network-steps/s, ETA <= %.0f s",
                     arch, depth, width, t + 1, T_max, idx.numel(), rate, remaining / max(rate, 1e-9))

    status = np.full(B, FAILED, dtype=np.int8)
    div = diverged_at.cpu().numpy()
    lt = final["loss_train"].cpu().numpy()
    converged = (lt - loss_opt) <= threshold
    status[converged] = CONVERGED
    status[div >= 0] = DIVERGED
    traj_np = {key: v.cpu().numpy() for key, v in traj.items()}
    return TrainResult(
        arch=arch, depth=depth, width=width, d=d, lr=lr, scale=scale, seed=seed, steps=steps,
        layers=[W.to(torch.float64).cpu().numpy() for W in out_layers],
        p=np.stack([n.p for n in nets]) if arch == "residual" else None,
        status=status, loss_train=lt, loss_test=final["loss_test"].cpu().numpy(),
        distance=final["distance"].cpu().numpy(), diverged_step=div, record_steps=record_steps,
        traj_loss_train=traj_np["loss_train"], traj_loss_test=traj_np["loss_test"],
        traj_distance=traj_np["distance"], traj_sharpness=traj_sharp,
        dtype=str(tdtype).removeprefix("torch."), device=str(dev), seconds=time.monotonic() - t0)


def _train_flow(nets, layers, c, prob, *, arch, depth, width, d, lr, scale, seed, steps, record_steps,
                loss_opt, threshold, flow_rtol, flow_atol, explode, tdtype, dev, t0, max_steps):
    """train(optimizer="flow"): gradient flow to times lr·steps, sampled at lr·record_steps."""
    from dlnpipe.flow import integrate

    B = len(lr)
    # stop a network once R − R* is 1e-6 of the convergence threshold: the flow has converged (the
    # Hessian there differs from the limit's by O(√(R − R*)), about 1e-7 relative)
    stop = 1e-6 * threshold
    out = integrate(layers, c, prob, arch, horizon=lr * steps, record_times=lr[:, None] * record_steps[None, :],
                    rtol=flow_rtol, atol=flow_atol, stop=stop, explode=explode, max_steps=max_steps)
    final = {k: v.cpu().numpy() for k, v in out["final"].items()}
    div_t = out["diverged_at"].cpu().numpy()
    diverged = np.isfinite(div_t)
    status = np.full(B, FAILED, dtype=np.int8)
    converged = (final["loss_train"] - loss_opt) <= threshold
    status[converged] = CONVERGED
    status[diverged] = DIVERGED
    out_layers = unflatten(out["y"], layers)
    log.info("flow %s L=%d m=%d: %d networks, %d batched field evaluations, median %d accepted steps",
             arch, depth, width, B, out["evals"], int(np.median(out["steps"].cpu().numpy())))
    return TrainResult(
        arch=arch, depth=depth, width=width, d=d, lr=lr, scale=scale, seed=seed, steps=steps,
        layers=[W.to(torch.float64).cpu().numpy() for W in out_layers],
        p=np.stack([n.p for n in nets]) if arch == "residual" else None,
        status=status, loss_train=final["loss_train"], loss_test=final["loss_test"], distance=final["distance"],
        diverged_step=np.where(diverged, np.floor(np.nan_to_num(div_t) / lr), -1).astype(np.int64),
        record_steps=record_steps, traj_loss_train=out["traj"]["loss_train"].cpu().numpy(),
        traj_loss_test=out["traj"]["loss_test"].cpu().numpy(), traj_distance=out["traj"]["distance"].cpu().numpy(),
        traj_sharpness=None, dtype=str(tdtype).removeprefix("torch."), device=str(dev),
        seconds=time.monotonic() - t0)


def _bytes_per_network(arch: str, depth: int, width: int, d: int, n: int, dtype: torch.dtype) -> int:
    """Device memory one network needs during training: weights, their copy for the fixed-point
    check, the update and the output buffer (4 × P), row vectors, and for GELU the activations."""
    params = depth * max(width, d) ** 2
    extra = 4 * depth * n * width if arch == "gelu" else 4 * depth * max(width, d)
    return (4 * params + extra) * torch.finfo(dtype).bits // 8 + 4096


def _concatenate(parts: list[TrainResult]) -> TrainResult:
    """One TrainResult from results of consecutive slices of the networks (same recording steps)."""
    first = parts[0]
    cat = lambda name: np.concatenate([getattr(r, name) for r in parts])  # noqa: E731
    per_net = ("lr", "scale", "seed", "steps", "status", "loss_train", "loss_test", "distance", "diverged_step",
               "traj_loss_train", "traj_loss_test", "traj_distance")
    fields = {name: cat(name) for name in per_net}
    return TrainResult(
        arch=first.arch, depth=first.depth, width=first.width, d=first.d,
        layers=[np.concatenate([r.layers[k] for r in parts]) for k in range(len(first.layers))],
        p=None if first.p is None else cat("p"),
        traj_sharpness=None if first.traj_sharpness is None else cat("traj_sharpness"),
        record_steps=first.record_steps, dtype=first.dtype, device=first.device,
        seconds=sum(r.seconds for r in parts), **fields)


def _by_dataset(data_of: list[Dataset], glob: np.ndarray) -> list[np.ndarray]:
    """Positions in ``glob`` grouped by the dataset of their network."""
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(glob):
        groups.setdefault(id(data_of[g]), []).append(i)
    return [np.array(v) for v in groups.values()]


def _snapshot(layers, c, arch: str, rows: np.ndarray) -> list[Weights]:
    out = []
    for r in rows:
        arrays = [W[r].to(torch.float64).cpu().numpy() for W in layers]
        if arch == "residual":
            arrays.append(c[r, 0].to(torch.float64).cpu().numpy())
        out.append(Weights(arrays, arch=arch))
    return out


def excess(result: TrainResult, dataset: Dataset) -> np.ndarray:
    """R − R* at the final weights, computed from the data (independent of the training path)."""
    return dataset.loss(result.regressors()) - dataset.loss_opt


