"""What a stepper is: it advances the live rows of a :class:`~dlnpipe.trainer.BatchState`.

A stepper owns only its own clock and per-network tensors (in ``state.rows``, so that the state
compacts them with the batch); it tells the state when to sample a row and when a row is done. The
trainer loop (:func:`run`) is the same for every stepper.
"""

from __future__ import annotations

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


class Stepper:
    name = ""
    options: tuple[str, ...] = ()  # the keyword arguments of train() that configure this stepper
    records_sharpness = True  # whether sharpness trajectories can be sampled

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
