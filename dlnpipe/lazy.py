"""Modules imported on first use.

The architectures (dlnpipe.archs) are asked about themselves by the light side of the workflow
(the config, the grid, the tables and figures) and compute with torch on the heavy side (training,
Hessians). ``torch`` here is torch itself, loaded the first time one of its attributes is used, so
that a table or figure job never pays torch's import (about 1 s per job).
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    """``name`` as a module object that runs its import on first attribute access (or the module
    itself if it is already imported). ``import name`` elsewhere returns the same object."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ImportError(f"no module named {name!r}")
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


torch = lazy_module("torch")
