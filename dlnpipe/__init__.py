"""dlnpipe: sharpness of deep linear networks (Marion & Chizat, NeurIPS 2024), reproduced and extended.

The scientific core: data with a controlled condition number, batched training of many deep
networks at once, Hessian sharpness (Lanczos, exact formula, dense, power), trace and spectral
density, and the theory's bounds.
Names are imported on first use, so that light stages (plots, tables) do not pay torch's import.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"  # the one place of the version: pyproject.toml reads it; CHANGELOG.md says what it added

_EXPORTS = {
    "Dataset": "dlnpipe.data", "dataset_from_arrays": "dlnpipe.data", "load_dataset": "dlnpipe.data",
    "make_dataset": "dlnpipe.data",
    "Structure": "dlnpipe.diagnostics", "structure": "dlnpipe.diagnostics",
    "Weights": "dlnpipe.networks", "init_network": "dlnpipe.networks",
    "SharpnessResult": "dlnpipe.curvature", "sharpness": "dlnpipe.curvature",
    "smallest_eigenvalue": "dlnpipe.curvature",
    "Bounds": "dlnpipe.theory", "balanced_minimizer": "dlnpipe.theory", "bounds": "dlnpipe.theory",
    "random_factorization": "dlnpipe.theory",
    "CONVERGED": "dlnpipe.status", "FAILED": "dlnpipe.status", "DIVERGED": "dlnpipe.status",
    "TrainPath": "dlnpipe.status",
    "STATUS_MEANINGS": "dlnpipe.status", "Status": "dlnpipe.status",
    "TrainResult": "dlnpipe.result", "train": "dlnpipe.training",
    "Architecture": "dlnpipe.archs",
    "hessian_trace": "dlnpipe.spectrum", "spectral_density": "dlnpipe.spectrum", "TraceResult": "dlnpipe.spectrum",
    "SpectralDensity": "dlnpipe.spectrum",
    "FlowSolution": "dlnpipe.gfs", "flow_solution": "dlnpipe.gfs", "gfs_sharpness": "dlnpipe.gfs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dlnpipe' has no attribute {name!r}")


def __dir__():
    return __all__
