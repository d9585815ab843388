"""Training B networks at once: the entry point, :func:`train` (docs/theory.md#architectures,
#gradient-descent-and-the-edge-of-stability).

All networks of one call share architecture, depth and width; each has its own learning rate, init
scale, seed and number of steps (and, for linear nets, dataset). The batch is one set of tensors
(B, out, in) per layer on the device; :mod:`dlnpipe.trainer` holds it and a stepper of
:mod:`dlnpipe.steppers` (gradient descent, gradient flow) advances it.

Status of a network at the end (:class:`dlnpipe.status.Status`, CF flags in the cube):
    converged  R − R* ≤ rtol·R* + atol·(yᵀy/n)
    failed     finite but not converged (stalled at a saddle, or oscillating above η_c)
    diverged   the loss became non-finite or exceeded ``explode``·max(R(0), yᵀy/n); the network is
               frozen at the first such state and its later trajectory entries are NaN
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from dlnpipe import archs, steppers
from dlnpipe._checks import check_int, check_positive
from dlnpipe.data import Dataset
from dlnpipe.devices import dtype_name, memory_budget, resolve_device, resolve_dtype
from dlnpipe.networks import Weights, init_network
from dlnpipe.result import TrainResult, concatenate
from dlnpipe.status import CONVERGED, DIVERGED, FAILED, STATUS_MEANINGS  # noqa: F401  (re-exported)
from dlnpipe.steppers.base import Schedule, run
from dlnpipe.tensors import stack_weights
from dlnpipe.trainer import BatchState, TrajectorySharpness

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainNetworks:
    """The per-network settings of a call: lr, scale, seed, steps (B,) and each network's dataset."""

    lr: np.ndarray
    scale: np.ndarray
    seed: np.ndarray
    steps: np.ndarray
    data: list[Dataset]
    init: list[Weights] | None = None  # where each network starts, instead of its init draw

    def __len__(self) -> int:
        return len(self.lr)

    def slice(self, s: slice) -> TrainNetworks:
        return TrainNetworks(self.lr[s], self.scale[s], self.seed[s], self.steps[s], self.data[s],
                             None if self.init is None else self.init[s])


def _per_network(name, value, B, *, kind=float) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value, dtype=kind))
    if arr.ndim != 1 or arr.size not in (1, B):
        raise ValueError(f"{name} must be a scalar or have one entry per network ({B}), got shape {arr.shape}")
    return np.broadcast_to(arr, (B,)).copy()


def _networks(dataset, lr, scale, seed, steps, count: int = 1) -> TrainNetworks:
    """Validated per-network settings; B is the longest of lr, scale, seed, steps, the datasets (and
    ``count``, the start weights given)."""
    per_data = [dataset] if isinstance(dataset, Dataset) else list(dataset)
    if not per_data or not all(isinstance(x, Dataset) for x in per_data):
        raise ValueError("dataset must be a Dataset or a non-empty sequence of Datasets (one per network)")
    B = max(np.size(lr), np.size(scale), np.size(seed), np.size(steps), len(per_data), count)
    if len(per_data) not in (1, B):
        raise ValueError(f"dataset must have one entry per network ({B}), got {len(per_data)}")
    nets = TrainNetworks(lr=_per_network("lr", lr, B), scale=_per_network("scale", scale, B),
                    seed=_per_network("seed", seed, B, kind=np.int64),
                    steps=_per_network("steps", steps, B, kind=np.int64), data=per_data * (B // len(per_data)))
    for x in nets.lr:
        check_positive("lr", x)
    if (nets.steps < 0).any():
        raise ValueError(f"steps must be >= 0, got {nets.steps[nets.steps < 0][0]}")
    bad = ~(np.isfinite(nets.scale) & (nets.scale >= 0))
    if bad.any():
        raise ValueError(f"scale must be finite and >= 0, got {nets.scale[bad][0]}")
    return nets


def _start_weights(init, nets: TrainNetworks, arch: archs.Architecture, depth: int, width: int,
                   d: int) -> TrainNetworks:
    """``nets`` starting from ``init`` (one :class:`Weights` per network, of this architecture and shape)."""
    init = [init] if isinstance(init, Weights) else list(init)
    if len(init) not in (1, len(nets)):
        raise ValueError(f"init must have one Weights per network ({len(nets)}), got {len(init)}")
    init = init * (len(nets) // len(init))
    shapes = arch.layer_shapes(depth=depth, width=width, d=arch.in_dim(width, d))
    for i, net in enumerate(init):
        if not isinstance(net, Weights) or net.architecture is not arch:
            raise ValueError(f"init[{i}] must be dlnpipe.Weights of arch {arch.name!r}")
        if [W.shape for W in net.layers] != shapes:
            raise ValueError(f"init[{i}] has layers {[W.shape for W in net.layers]}, the networks of this call "
                             f"(depth {depth}, width {width}, d {d}) have {shapes}")
    return replace(nets, init=init)


def _record_steps(steps: np.ndarray, record_every, record_steps) -> np.ndarray:
    T_max = int(steps.max())
    if record_steps is None:
        every = max(1, T_max // 200) if record_every is None else check_int("record_every", record_every, minimum=1)
        record_steps = np.append(np.arange(0, T_max + 1, every), T_max)
    record_steps = np.unique(np.asarray(record_steps, dtype=np.int64))
    if record_steps.size and record_steps[0] < 0:
        raise ValueError(f"record_steps must be >= 0, got {record_steps[0]}")
    return record_steps


@dataclass(frozen=True)
class Settings:
    """What every batch of one call shares."""

    arch: archs.Architecture
    depth: int
    width: int
    d: int
    dtype: torch.dtype
    device: torch.device
    record_steps: np.ndarray
    record_sharpness: bool
    samplers: dict
    rtol: float
    atol: float
    p_seed: int
    log_every_s: float | None
    sharpness_tol: float

    @property
    def label(self) -> str:
        return f"{self.arch.name} L={self.depth} m={self.width}"


def train(dataset: Dataset | list[Dataset], *, arch: str, depth: int, width: int, lr, scale, seed, steps,
          dtype="float64", device="cpu", record_every: int | None = None, record_steps=None,
          record_sharpness: bool = False, samplers: dict | None = None, rtol: float = 1e-6, atol: float = 1e-7,
          explode: float = 1e6, p_seed: int = 0, log_every_s: float | None = 10.0,
          sharpness_tol: float = 1e-8, check_every: int = 100, exit_fixed: bool | None = None,
          max_batch: int | None = None, optimizer: str = "gd", flow_rtol: float = 1e-8,
          flow_atol: float = 1e-10, flow_max_steps: int = 100_000, init=None, **options) -> TrainResult:
    """Train B networks; lr, scale, seed, steps are scalars or length-B sequences (B is the longest).

    Records train/test loss and ‖w_prod − w*‖² every ``record_every`` steps (default: about 200
    points) or at the given ``record_steps``, and the Lanczos sharpness there too when
    ``record_sharpness`` (to tolerance ``sharpness_tol``), and there too each of ``samplers`` (name → a callable
    of the sampled networks and their indices, :data:`dlnpipe.trainer.Sampler`) into ``extras[name]``, e.g.
    ``samplers={"traj_gfs_sharpness": dlnpipe.gfs.phi_sampler(dataset)}``: φ along the run;
    ``{"traj_balance": dlnpipe.eos.balance_sampler}``: the balancing gaps (B, samples, L − 1).

    ``optimizer="gd"``: gradient descent (:mod:`dlnpipe.steppers.gd`; every ``check_every`` steps
    diverged networks and networks at an exact fixed point of the GD map leave the batch,
    ``exit_fixed``, default on unless sharpness trajectories are recorded). ``optimizer="flow"``:
    gradient flow (:mod:`dlnpipe.steppers.flow`): network b is integrated to time lr_b·steps_b with
    error tolerances ``flow_rtol``/``flow_atol`` (at most ``flow_max_steps`` accepted steps) and
    recorded at times lr_b·record_steps; ``diverged_step`` is then the GD-equivalent step t/lr.
    Further ``options`` go to the optimizer's stepper (each stepper names the options it takes; an
    option it does not take is an error).

    Networks are trained in batches of at most ``max_batch`` (default: as many as fit in half the
    free memory of a CUDA device, 4 GB on CPU); each network's result does not depend on its batch.

    ``dataset`` is one Dataset for all networks or, for linear nets, a sequence with one Dataset per
    network (same d): networks on different datasets then train in one batch.

    ``init``: where the networks start (one :class:`~dlnpipe.networks.Weights` per network, or one for all),
    instead of the draw ``init_network(scale, seed)``; ``scale`` is then only recorded, ``seed`` still
    seeds what the run draws (sharpness start vectors, label noise).
    """
    nets = _networks(dataset, lr, scale, seed, steps, 1 if init is None or isinstance(init, Weights) else len(init))
    architecture = archs.get(arch)
    depth, width, d = architecture.check(depth=depth, width=width, d=nets.data[0].d)
    if init is not None:
        nets = _start_weights(init, nets, architecture, depth, width, d)
    stepper = steppers.build(optimizer, options, check_every=check_every, explode=check_positive("explode", explode),
                             exit_fixed=(not record_sharpness) if exit_fixed is None else exit_fixed,
                             flow_rtol=flow_rtol, flow_atol=flow_atol, flow_max_steps=flow_max_steps)
    if samplers and not record_sharpness:
        raise ValueError("samplers are sampled where the sharpness is: they need record_sharpness=True")
    if record_sharpness and not stepper.records_sharpness:
        raise ValueError(f"record_sharpness samples GD trajectories; it is not available with "
                         f"optimizer={optimizer!r}")
    settings = Settings(arch=architecture, depth=depth, width=width, d=d, dtype=resolve_dtype(dtype),
                        device=resolve_device(device), record_steps=_record_steps(nets.steps, record_every,
                                                                                  record_steps),
                        record_sharpness=bool(record_sharpness), samplers=dict(samplers or {}),
                        rtol=check_positive("rtol", rtol), atol=atol, p_seed=p_seed, log_every_s=log_every_s,
                        sharpness_tol=sharpness_tol)
    if max_batch is None:
        per_net = architecture.bytes_per_network(depth=depth, width=width, d=d, n=nets.data[0].n,
                                                 itemsize=settings.dtype.itemsize)
        max_batch = max(1, int(memory_budget(settings.device) // per_net))
    max_batch = check_int("max_batch", max_batch, minimum=1)
    if len(nets) > max_batch:
        log.info("train %s: %d networks in batches of %d (device memory)", settings.label, len(nets), max_batch)
    stepper = stepper.sized(len(nets))
    return concatenate([_train_batch(nets.slice(part), settings, stepper.take(part))
                        for part in (slice(i, i + max_batch) for i in range(0, len(nets), max_batch))])


def _train_batch(nets: TrainNetworks, settings: Settings, stepper) -> TrainResult:
    t0 = time.monotonic()
    arch, dtype, dev = settings.arch, settings.dtype, settings.device
    weights = nets.init or [init_network(arch, depth=settings.depth, width=settings.width, d=settings.d,
                                         scale=nets.scale[i], seed=int(nets.seed[i]), p_seed=settings.p_seed)
                            for i in range(len(nets))]
    layers, c = stack_weights(weights, dtype=dtype, device=dev)
    in_dim = layers[0].shape[2]
    prob = arch.problem(nets.data, in_dim=in_dim, dtype=dtype, device=dev, with_data=stepper.needs_data)
    loss_opt = np.array([x.loss_opt for x in nets.data])
    threshold = settings.rtol * loss_opt + settings.atol * np.array([x.yty for x in nets.data])
    sharp = None
    if settings.record_sharpness:
        prob64 = arch.problem(nets.data, in_dim=in_dim, dtype=torch.float64, device=dev)
        sharp = TrajectorySharpness(prob64, nets.seed, sum(W[0].numel() for W in layers),
                                    settings.record_steps.size, tol=settings.sharpness_tol, device=dev,
                                    samplers=settings.samplers)
    state = BatchState(arch, layers, c, prob, n_samples=settings.record_steps.size, loss_opt=loss_opt,
                       threshold=threshold, sharpness=sharp, log_every_s=settings.log_every_s, label=settings.label)
    run(state, stepper, Schedule(lr=nets.lr, steps=nets.steps, record_steps=settings.record_steps, seed=nets.seed))
    status, diverged_step = state.statuses()
    final = {k: v.cpu().numpy() for k, v in state.final.items()}
    traj = {k: v.cpu().numpy() for k, v in state.traj.items()}
    return TrainResult(
        arch=arch.name, depth=settings.depth, width=settings.width, d=settings.d, lr=nets.lr, scale=nets.scale,
        seed=nets.seed, steps=nets.steps, layers=[W.to(torch.float64).cpu().numpy() for W in state.out_layers],
        p=np.stack([np.asarray(w.p) for w in weights]) if arch.has_projection else None, status=status,
        loss_train=final["loss_train"], loss_test=final["loss_test"], distance=final["distance"],
        diverged_step=diverged_step, record_steps=settings.record_steps, traj_loss_train=traj["loss_train"],
        traj_loss_test=traj["loss_test"], traj_distance=traj["distance"],
        traj_sharpness=None if sharp is None else sharp.values,
        train_path=np.full(len(nets), stepper.path, dtype=np.int8), dtype=dtype_name(dtype), device=str(dev),
        seconds=time.monotonic() - t0, extras={**stepper.outputs(), **({} if sharp is None else sharp.extras()),
                                               "evaluations": state.evaluations.cpu().numpy()})


def excess(result: TrainResult, dataset: Dataset) -> np.ndarray:
    """R − R* at the final weights, computed from the data (independent of the training path)."""
    return dataset.loss(result.regressors()) - dataset.loss_opt
