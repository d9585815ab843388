"""What a stepper is: it advances the live rows of a :class:`~dlnpipe.trainer.BatchState`.

A stepper owns only its own clock and per-network tensors (typed :class:`~dlnpipe.rows.Rows`
attached to the state, so that the state compacts them with the batch); it tells the state when to
sample a row and when a row is done. The trainer loop (:func:`run`) is the same for every stepper.

The rules every explicit stepper follows at every step, on the torch path and in the compiled kernels
alike (the kernels take the cap as an argument; tests/test_kernels.py holds both paths to the same
divergence steps on networks built to diverge):

* divergence: a network whose training loss R(W_t) is not finite or exceeds its cap
  ``explode``·max(|R(W_0)|, yᵀy/n) (:func:`divergence_cap`) is *frozen* from step t on: η = 0, its
  weights (and optimizer state) stay where they are, its divergence step is the number of steps it took;
* its other networks step, each with its own η.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dlnpipe.lazy import torch
from dlnpipe.rows import Rows
from dlnpipe.status import TrainPath

if TYPE_CHECKING:
    from torch import Tensor

    from dlnpipe.trainer import BatchState

EXPLODE = 1e6  # the default divergence factor: a loss beyond 1e6·max(R(0), yᵀy/n) has diverged


def divergence_cap(loss0, yty, explode: float):
    """Each network's cap (b,): the loss beyond which it has diverged, ``explode``·max(|R(W_0)|, yᵀy/n);
    ``yty``: yᵀy/n, one for the batch or one per network."""
    return explode * torch.maximum(loss0.abs(), torch.as_tensor(yty, dtype=loss0.dtype, device=loss0.device))


@dataclass
class Progress(Rows):
    """The per-network clock of an explicit stepper: η, the step count, whether the network still moves
    (False from the step it diverged: frozen), the steps it took while alive, its divergence cap."""

    lr: Tensor  # (b,) the step's dtype
    steps: Tensor  # (b,) int64
    alive: Tensor  # (b,) bool
    alive_steps: Tensor  # (b,) int64: the divergence step of a frozen network
    cap: Tensor  # (b,)

    @classmethod
    def start(cls, state: BatchState, schedule: Schedule, loss0, explode: float) -> Progress:
        dev, dtype = state.idx.device, state.layers[0].dtype
        return cls(lr=torch.tensor(schedule.lr, dtype=dtype, device=dev),
                   steps=torch.tensor(schedule.steps, device=dev),
                   alive=torch.ones(state.size, dtype=torch.bool, device=dev),
                   alive_steps=torch.zeros(state.size, dtype=torch.int64, device=dev),
                   cap=divergence_cap(loss0, state.prob.yty, explode))

    def check_(self, value) -> None:
        """Freeze the networks whose loss ``value`` (b,) diverged (NaN and inf included)."""
        self.alive &= value <= self.cap


@dataclass(frozen=True)
class Schedule:
    """Each network's learning rate η (B,) and step count (B,), and the recording steps (T,):
    GD takes ``steps`` steps of size η; a continuous-time stepper integrates to time η·steps and
    samples at times η·record_steps."""

    lr: np.ndarray
    steps: np.ndarray
    record_steps: np.ndarray
    seed: np.ndarray | None = None  # each network's seed (mini-batches and label noise draw from it)


class Stepper:
    name: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ()  # the keyword arguments of train() that configure this stepper
    records_sharpness: ClassVar[bool] = True  # whether sharpness trajectories can be sampled
    # options with one value per network: name -> trailing shape (each one of dlnpipe.steppers.OPTIONS)
    per_network: ClassVar[Mapping[str, tuple[int, ...]]] = MappingProxyType({})
    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})  # the per-network options' defaults
    values: dict[str, np.ndarray]  # this instance's per-network option values, by name
    path: TrainPath = TrainPath.TORCH  # which code advanced the last batch (decided once, in start)

    # the sharpness this optimizer's stability is about (a cube variable) and its threshold
    edge_on: ClassVar[str] = "sharpness"

    def __init__(self) -> None:
        self.values = {}

    @classmethod
    def threshold(cls, lr: np.ndarray, settings) -> np.ndarray:
        """The largest ``edge_on`` at which the optimizer is stable near a minimizer (its edge of stability),
        per network: ``lr`` (B,), ``settings`` the option values by name (arrays of B, as the cube's
        optim coordinates: momentum, beta1, ...). GD: 2/η."""
        return 2.0 / np.asarray(lr, dtype=float)

    @classmethod
    def resolved_options(cls, settings: dict, n: int) -> dict:
        """Every per-network option of this stepper at one grid point: ``settings`` where it gives one, the
        stepper's default elsewhere; a default of None is n, the training set's size (a batch size: the
        whole training set, gradient descent)."""
        return {k: n if v is None else v for k, v in {**cls.defaults, **settings}.items()}

    @classmethod
    def variant(cls, given: dict) -> type[Stepper]:
        """The class that runs this optimizer with the options ``given`` (itself, by default)."""
        return cls

    @property
    def needs_data(self) -> bool:
        """Whether the batch's problem must hold the samples (X, y), not only their moments."""
        return False

    def sized(self, B: int) -> Stepper:
        """This stepper with its per-network options broadcast to B networks (one value for all, or one
        each: anything else is an error naming the option)."""
        out = copy.copy(self)
        out.values = {}
        for name, value in self.values.items():
            tail = self.per_network[name]
            arr = np.asarray(value, dtype=float)
            if tail == () and arr.shape == (1,):  # a one-element list: one value for all
                arr = arr.reshape(())
            if arr.shape not in (tail, (B, *tail)):
                raise ValueError(f"{name} must be {'a scalar' if not tail else f'of shape {tail}'} or have one "
                                 f"entry per network ({B}), got shape {arr.shape}")
            out.values[name] = np.broadcast_to(arr, (B, *tail)).copy()
        return out

    def take(self, part: slice) -> Stepper:
        """This (sized) stepper for the networks ``part``."""
        out = copy.copy(self)
        out.values = {name: v[part] for name, v in self.values.items()}
        return out

    def outputs(self) -> dict[str, np.ndarray]:
        """Per-network results of the last run beyond the trainer's own (e.g. averaged iterates)."""
        return {}

    @classmethod
    def evaluations(cls, steps: int, options: dict) -> float:
        """About how many gradient evaluations a network with this step count costs (the workflow's
        cost model; ``options`` are the experiment's options of this stepper)."""
        return float(steps)

    def start(self, state: BatchState, schedule: Schedule) -> None:
        """Set up the stepper's clock and per-network tensors (the state's batch is full), and decide, once
        for the batch, which code advances it (:attr:`path`)."""
        raise NotImplementedError

    def advance(self, state: BatchState) -> bool:
        """Move the live rows forward; False when every network is done."""
        raise NotImplementedError


def run(state: BatchState, stepper: Stepper, schedule: Schedule) -> None:
    """Train until every network of ``state`` is done."""
    stepper.start(state, schedule)
    while state.size and stepper.advance(state):
        pass
