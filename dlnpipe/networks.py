"""Deep networks of PAPER.md §2: initialisation and the weight container.

Shapes (L = depth, m = width, d = input dimension):

* ``small`` and ``gelu``: W_1 (m, d), W_2..W_{L-1} (m, m), W_L (1, m); entries i.i.d. N(0, s²), no 1/√m
  factor. Depth 1 is a single (1, d) layer. f(x) = W_L ⋯ W_1 x (GELU after every layer but the last
  for ``gelu``).
* ``residual``: every layer (m, m), W_k = I + s/√(L·m) N_k, f(x) = pᵀ W_L ⋯ W_1 E x, where p ∈ R^m is a
  fixed (untrained) unit vector and E the (m, d) zero-padding isometry, so m ≥ d. For m = d this is
  the paper's residual network; m > d is dlnpipe's extension.

The regressor of a linear network is w_prod = (c W_L ⋯ W_1 E)ᵀ with c = pᵀ (residual) or 1.
"""

from __future__ import annotations

import numpy as np

from dlnpipe._checks import check_arch, check_int


class Weights(list):
    """The trained layers [W_1, ..., W_L] of one network, plus p as last element for ``residual``.

    A plain list of numpy arrays (PAPER.md §2 shapes) that also knows its architecture:
    ``.arch``, ``.layers`` (the trained matrices only), ``.p`` (None unless residual), ``.depth``.
    """

    def __init__(self, arrays, *, arch: str):
        super().__init__(np.asarray(a, dtype=np.float64) for a in arrays)
        self.arch = check_arch(arch)
        if arch == "residual" and (len(self) < 2 or self[-1].ndim != 1):
            raise ValueError("residual weights must end with the projection vector p (1-d)")

    @property
    def layers(self) -> list[np.ndarray]:
        return list(self[:-1]) if self.arch == "residual" else list(self)

    @property
    def p(self) -> np.ndarray | None:
        return self[-1] if self.arch == "residual" else None

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def d(self) -> int:
        """Input dimension of the data (for residual nets, the unpadded one is unknown: width)."""
        return self.layers[0].shape[1]

    def product(self) -> np.ndarray:
        """w_prodᵀ as a row of shape (in_dim,): c W_L ⋯ W_1 (c = pᵀ for residual nets)."""
        row = self.p[None, :] if self.arch == "residual" else np.ones((1, 1))
        for W in reversed(self.layers):
            row = row @ W
        return row[0]


def layer_shapes(arch: str, *, depth: int, width: int, d: int) -> list[tuple[int, int]]:
    """Shapes (out, in) of W_1..W_L for an architecture (residual: all (m, m), input padded to m)."""
    if arch == "residual":
        return [(width, width)] * depth
    dims = [d] + [width] * (depth - 1) + [1]
    return [(dims[k + 1], dims[k]) for k in range(depth)]


def check_network_args(arch, depth, width, d) -> tuple[str, int, int, int]:
    arch = check_arch(arch)
    depth = check_int("depth", depth, minimum=1)
    width = check_int("width", width, minimum=1)
    d = check_int("d", d, minimum=1)
    if arch == "residual" and width < d:
        raise ValueError(f"width must be >= d for residual networks (inputs are zero-padded to the "
                         f"width), got width={width} with d={d}")
    return arch, depth, width, d


def projection_vector(width: int, *, seed: int) -> np.ndarray:
    """The residual network's fixed unit vector p ∈ R^width (one per dataset/depth, PAPER.md §2)."""
    p = np.random.default_rng(seed).standard_normal(width)
    return p / np.linalg.norm(p)


def init_network(arch: str, *, depth: int, width: int, d: int, scale: float, seed: int,
                 p_seed: int = 0) -> Weights:
    """Initial weights of one network (PAPER.md §2); ``seed`` drives the layers, ``p_seed`` p.

    The draw depends only on (arch, depth, width, d, scale, seed), never on which other networks
    are trained alongside it.
    """
    arch, depth, width, d = check_network_args(arch, depth, width, d)
    scale = float(scale)
    if not np.isfinite(scale) or scale < 0:
        raise ValueError(f"scale must be a finite number >= 0, got scale={scale!r}")
    rng = np.random.default_rng(seed)
    shapes = layer_shapes(arch, depth=depth, width=width, d=d)
    if arch == "residual":
        eye = np.eye(width)
        layers = [eye + scale / np.sqrt(depth * width) * rng.standard_normal(s) for s in shapes]
        return Weights([*layers, projection_vector(width, seed=p_seed)], arch=arch)
    return Weights([scale * rng.standard_normal(s) for s in shapes], arch=arch)
