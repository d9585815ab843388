"""Per-network state of a batch being trained, typed: each stepper declares what it keeps of every live
network as a :class:`Rows` dataclass, and the batch (:class:`dlnpipe.trainer.BatchState`) compacts every
attached one when networks leave it."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class Rows:
    """Per-network tensors of the live rows, kept by a stepper and compacted with the batch: every field is a
    tensor (b, ...), a list of them (one per layer) or a dict of either (by option or buffer name). A stepper
    declares its own subclass with the fields it reads and writes, and attaches an instance to the state
    (:meth:`~dlnpipe.trainer.BatchState.attach`)."""

    def tensors(self) -> list:
        """Every tensor of these rows."""
        return [x for f in fields(self) for x in _leaves(getattr(self, f.name))]

    def compact_(self, keep) -> None:
        """Keep only the rows selected by ``keep``, in place."""
        for f in fields(self):
            setattr(self, f.name, _take(getattr(self, f.name), keep))


def _leaves(value) -> list:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    return list(value) if isinstance(value, list) else [value]


def _take(value, keep):
    if isinstance(value, dict):
        return {k: _take(v, keep) for k, v in value.items()}
    return [x[keep] for x in value] if isinstance(value, list) else value[keep]
