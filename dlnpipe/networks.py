"""One network's weights as numpy arrays, and its initialisation (docs/theory.md#architectures).

The shapes and the initialisation belong to the architecture (:mod:`dlnpipe.archs`); a
:class:`Weights` is the list of its arrays (p last for an architecture with a projection). The
regressor of a linear network is w_prod = (c W_L ⋯ W_1 E)ᵀ with c = pᵀ or 1.
"""

from __future__ import annotations

import numpy as np

from dlnpipe import archs


class Weights(list):
    """The trained layers [W_1, ..., W_L] of one network, plus p as last element with a projection.

    A plain list of numpy arrays (shapes: docs/theory.md#architectures) that also knows its architecture:
    ``.arch`` (its name), ``.architecture``, ``.layers`` (the trained matrices only), ``.p`` (None
    without a projection), ``.depth``; ``.seed``: the network's seed where it has one (its init's, a trained
    network's), from which the random vectors of its measurements are drawn; None otherwise.
    """

    def __init__(self, arrays, *, arch, seed: int | None = None):
        super().__init__(np.asarray(a, dtype=np.float64) for a in arrays)
        self.seed = None if seed is None else int(seed)
        self.architecture = archs.get(arch)
        self.arch = self.architecture.name
        if self.architecture.has_projection and (len(self) < 2 or self[-1].ndim != 1):
            raise ValueError(f"{self.arch} weights must end with the projection vector p (1-d)")

    @property
    def layers(self) -> list[np.ndarray]:
        return list(self[:-1]) if self.architecture.has_projection else list(self)

    @property
    def p(self) -> np.ndarray | None:
        return self[-1] if self.architecture.has_projection else None

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def d(self) -> int:
        """Input dimension of the first layer (with padded inputs, the padded one)."""
        return self.layers[0].shape[1]

    def prefix(self) -> np.ndarray:
        """The row c in front of the layers, (1, out_L): pᵀ, or ones."""
        return self.p[None, :] if self.p is not None else np.ones((1, self.layers[-1].shape[0]))

    def product(self) -> np.ndarray:
        """w_prodᵀ as a row of shape (in_dim,): c W_L ⋯ W_1."""
        row = self.prefix()
        for W in reversed(self.layers):
            row = row @ W
        return row[0]


def init_network(arch, *, depth: int, width: int, d: int, scale: float, seed: int, p_seed: int = 0) -> Weights:
    """Initial weights of one network (docs/theory.md#architectures); ``seed`` drives the layers, ``p_seed`` p.

    The draw depends only on (arch, depth, width, d, scale, seed), never on which other networks
    are trained alongside it.
    """
    architecture = archs.get(arch)
    depth, width, d = architecture.check(depth=depth, width=width, d=d)
    scale = float(scale)
    if not np.isfinite(scale) or scale < 0:
        raise ValueError(f"scale must be a finite number >= 0, got scale={scale!r}")
    arrays = architecture.init_arrays(depth=depth, width=width, d=d, scale=scale, seed=seed, p_seed=p_seed)
    return Weights(arrays, arch=architecture, seed=seed)
