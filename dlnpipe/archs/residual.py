"""``residual``: the paper's residual initialisation of a deep linear network (docs/theory.md#architectures).

f(x) = pᵀ W_L ⋯ W_1 E x with every layer (m, m), W_k(0) = I + s/√(L·m) N_k, N_k i.i.d. N(0, 1); p ∈ R^m
is a fixed (untrained) unit vector, one per dataset and depth (drawn from ``p_seed``), and E the
(m, d) zero-padding isometry, so m ≥ d. For m = d this is the paper's residual network; m > d is
dlnpipe's extension (inputs padded with zeros, p, I_m and √(L m)).
"""

from __future__ import annotations

import numpy as np

from dlnpipe.archs.linear import LinearArchitecture


def projection_vector(width: int, *, seed: int) -> np.ndarray:
    """The fixed unit vector p ∈ R^width."""
    p = np.random.default_rng(seed).standard_normal(width)
    return p / np.linalg.norm(p)


class Residual(LinearArchitecture):
    name = "residual"
    description = "deep linear network, residual init: I + s/√(L·m) N, fixed unit projection p; width >= d"
    small_init = False
    has_projection = True

    def width_error(self, width: int, d: int) -> str | None:
        if width < d:
            return (f"residual networks need width >= d (inputs are zero-padded to the width), "
                    f"got width={width} with d={d}")
        return None

    def in_dim(self, width: int, d: int) -> int:
        return width

    def layer_shapes(self, *, depth: int, width: int, d: int) -> list[tuple[int, int]]:
        return [(width, width)] * depth

    def init_arrays(self, *, depth, width, d, scale, seed, p_seed=0):
        rng = np.random.default_rng(seed)
        eye = np.eye(width)
        layers = [eye + scale / np.sqrt(depth * width) * rng.standard_normal(s)
                  for s in self.layer_shapes(depth=depth, width=width, d=d)]
        return [*layers, projection_vector(width, seed=p_seed)]


RESIDUAL = Residual()
