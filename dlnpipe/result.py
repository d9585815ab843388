"""What training returns: the final weights, statuses and trajectories of B networks (numpy)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dlnpipe.networks import Weights

PER_NETWORK = ("lr", "scale", "seed", "steps", "status", "loss_train", "loss_test", "distance", "diverged_step",
               "traj_loss_train", "traj_loss_test", "traj_distance", "train_path")


@dataclass(frozen=True, eq=False)
class TrainResult:
    """Final weights, status and sampled trajectories of B networks (numpy, float64).

    layers[k]: (B, out_k, in_k); p: (B, m) or None; status: (B,) int8 (:class:`dlnpipe.status.Status`);
    loss_train, loss_test, distance: (B,) at each network's last step; diverged_step: (B,) step of
    divergence or -1. Trajectories on ``record_steps`` (T,): arrays (B, T), NaN after a network's
    own last step or its divergence; ``traj_sharpness`` only when asked for. train_path: (B,) int8, which
    code trained each network (:class:`dlnpipe.status.TrainPath`: torch or a compiled kernel).
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
    train_path: np.ndarray
    dtype: str
    device: str
    seconds: float
    extras: dict = field(default_factory=dict)  # the optimizer's per-network outputs (B, ...), e.g. avg_W0, precond

    def __len__(self) -> int:
        return len(self.lr)

    def network(self, i: int) -> Weights:
        arrays = [W[i] for W in self.layers]
        if self.p is not None:
            arrays.append(self.p[i])
        return Weights(arrays, arch=self.arch, seed=int(self.seed[i]))

    def networks(self) -> list[Weights]:
        return [self.network(i) for i in range(len(self))]

    def regressors(self) -> np.ndarray:
        """w_prod of every network, (B, d)."""
        return np.stack([self.network(i).product()[: self.d] for i in range(len(self))])


def concatenate(parts: list[TrainResult]) -> TrainResult:
    """One TrainResult from results of consecutive slices of the networks (same recording steps)."""
    first = parts[0]
    if len(parts) == 1:
        return first
    cat = lambda name: np.concatenate([getattr(r, name) for r in parts])  # noqa: E731
    return TrainResult(
        arch=first.arch, depth=first.depth, width=first.width, d=first.d,
        layers=[np.concatenate([r.layers[k] for r in parts]) for k in range(len(first.layers))],
        p=None if first.p is None else cat("p"),
        traj_sharpness=None if first.traj_sharpness is None else cat("traj_sharpness"),
        record_steps=first.record_steps, dtype=first.dtype, device=first.device,
        seconds=sum(r.seconds for r in parts), **{name: cat(name) for name in PER_NETWORK},
        extras={name: np.concatenate([r.extras[name] for r in parts]) for name in first.extras})
