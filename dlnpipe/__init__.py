"""dlnpipe: sharpness of deep linear networks (Marion & Chizat, NeurIPS 2024), reproduced and extended.

The scientific core: data with a controlled condition number, batched training of many deep
networks at once, Hessian sharpness (Lanczos, exact formula, dense, power), and the theory's bounds.
"""

from dlnpipe.data import Dataset, dataset_from_arrays, load_dataset, make_dataset
from dlnpipe.diagnostics import Structure, structure
from dlnpipe.networks import Weights, init_network
from dlnpipe.sharpness import SharpnessResult, sharpness
from dlnpipe.theory import Bounds, balanced_minimizer, bounds, random_factorization
from dlnpipe.train import CONVERGED, DIVERGED, FAILED, STATUS_MEANINGS, TrainResult, train

__version__ = "0.1.0"

__all__ = [
    "CONVERGED", "DIVERGED", "FAILED", "STATUS_MEANINGS", "Bounds", "Dataset", "SharpnessResult",
    "Structure", "TrainResult", "Weights", "balanced_minimizer", "bounds", "dataset_from_arrays",
    "init_network", "load_dataset", "make_dataset", "random_factorization", "sharpness", "structure",
    "train",
]
