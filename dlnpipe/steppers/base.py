"""What a stepper is: it advances the live rows of a :class:`~dlnpipe.trainer.BatchState`.

A stepper owns only its own clock and per-network tensors (in ``state.rows``, so that the state
compacts them with the batch); it tells the state when to sample a row and when a row is done. The
trainer loop (:func:`run`) is the same for every stepper.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np


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
    name = ""
    options: tuple[str, ...] = ()  # the keyword arguments of train() that configure this stepper
    records_sharpness = True  # whether sharpness trajectories can be sampled
    per_network: dict[str, tuple[int, ...]] = {}  # options with one value per network: name -> trailing shape
    defaults: dict = {}  # the per-network options' defaults
    values: dict[str, np.ndarray] = {}

    # the sharpness this optimizer's stability is about (a cube variable) and its threshold
    edge_on = "sharpness"

    @classmethod
    def threshold(cls, lr: np.ndarray, settings) -> np.ndarray:
        """The largest ``edge_on`` at which the optimizer is stable near a minimizer (its edge of stability),
        per network: ``lr`` (B,), ``settings`` the option values by name (arrays of B, as the cube's
        optim coordinates: momentum, beta1, ...). GD: 2/η."""
        return 2.0 / np.asarray(lr, dtype=float)

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

    def start(self, state, schedule: Schedule) -> None:
        """Set up the stepper's clock and per-network tensors (the state's batch is full)."""
        raise NotImplementedError

    def advance(self, state) -> bool:
        """Move the live rows forward; False when every network is done."""
        raise NotImplementedError


def run(state, stepper: Stepper, schedule: Schedule) -> None:
    """Train until every network of ``state`` is done."""
    stepper.start(state, schedule)
    while state.size and stepper.advance(state):
        pass
