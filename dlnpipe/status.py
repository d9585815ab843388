"""The status of a trained network: one named type, used everywhere (stored as CF flags in the cube).

    converged  R − R* ≤ rtol·R* + atol·(yᵀy/n) at the end
    failed     finite but not converged (stalled at a saddle, oscillating above η_c, a stiff flow)
    diverged   the loss became non-finite or exploded; the network was frozen where it happened

and, refining it, how the network ended (:class:`FailureKind`: a failed one unstable, at a saddle or slow).
"""

from __future__ import annotations

from enum import IntEnum


class Flag(IntEnum):
    """A value stored as a CF flag in the cube: its ``meaning`` is its name in lower case."""

    @property
    def meaning(self) -> str:
        return self.name.lower()


class Status(Flag):
    CONVERGED = 0
    FAILED = 1
    DIVERGED = 2


CONVERGED, FAILED, DIVERGED = Status.CONVERGED, Status.FAILED, Status.DIVERGED
STATUS_MEANINGS = tuple(s.meaning for s in Status)  # ("converged", "failed", "diverged")
STATUS_VALUES = tuple(int(s) for s in Status)  # (0, 1, 2): the CF flag_values
NO_NETWORK = -1  # the cube's status where a ragged grid point holds no network


class TrainPath(Flag):
    """Which code advanced a network's training steps: torch's batched tensor operations, or a compiled
    kernel (:mod:`dlnpipe.kernels`). Decided once per batch by its stepper; recorded in the train file, the
    cube (``train_path``) and MLflow."""

    TORCH = 0
    COMPILED = 1


class FailureKind(Flag):
    """How a network ended (the cube's ``failure`` flag): the status for converged and diverged networks, and
    for failed ones what holds them (:func:`dlnpipe.eos.failure_kinds`)."""

    CONVERGED = 0
    DIVERGED = 1
    UNSTABLE = 2
    SADDLE = 3
    SLOW = 4
