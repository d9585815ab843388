"""Modules imported on first use.

The architectures and the light library modules (problem, devices, steppers) are imported by the light
side of the workflow (the config, the grid, the tables and figures), and compute with torch on the
heavy side (training, Hessians). ``torch`` here is a stand-in that imports torch the first time one of
its attributes is used, so that a table or figure job never pays torch's import (about 1 s per job).
Until then torch is not in ``sys.modules`` at all, so libraries that look for it there (seaborn, scipy)
do not wake it up either.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING


class LazyModule(ModuleType):
    """The module ``name``, imported on first attribute access; each attribute is then kept here."""

    def __getattr__(self, attr: str):
        value = getattr(importlib.import_module(self.__name__), attr)
        setattr(self, attr, value)
        return value


if TYPE_CHECKING:  # the type checker sees torch itself
    import torch
else:
    torch = LazyModule("torch")
