"""How the tests compare numbers that different CPUs compute in different orders.

Batched and single-network kernels (and the BLAS path torch picks for a batch size, and the vector
units of the CPU) sum in different orders, so two float64 computations of the same quantity agree
to a few ulps of the *magnitudes that were summed*, not of the result. Two kinds of quantities:

* O(1) quantities (weights, eigenvalues, losses far from R*): a relative tolerance is right.
* quantities that can sit at the rounding floor (a loss near R*, an excess loss R − R*, a distance
  ‖w − w*‖² of a converged network, a gradient entry near zero): their rounding error is set by the
  size of the problem (yᵀy/n for losses, ‖w*‖² for distances, the largest entry for a gradient),
  so they are compared with an *absolute* tolerance scaled to that size. A relative tolerance on
  1e-21 would test the CPU, not dlnpipe.

REL is the agreement asked of two float64 paths that differ only in summation order after a few
hundred training steps: ≈ 1e6 ulps, far above the drift rounding can cause (GD is a contraction
near the minimizers these tests reach) and far below any real discrepancy (a wrong mask, a leaked
NaN, a network trained on the wrong dataset all give differences of order 1e-3 or more).
"""

from __future__ import annotations

import numpy as np

REL = 1e-10


def loss_scale(*datasets) -> float:
    """The size of a loss on these datasets: the largest yᵀy/n (R(0), the loss of the zero network)."""
    return max(float(ds.yty) for ds in datasets)


def distance_scale(*datasets) -> float:
    """The size of ‖w − w*‖²: the largest ‖w*‖²."""
    return max(float(ds.w_norm) ** 2 for ds in datasets)


def assert_floor_close(actual, desired, *, scale: float, rel: float = REL, err_msg: str = "") -> None:
    """|actual − desired| ≤ rel·scale elementwise (NaN where NaN): for values that may sit at the rounding floor."""
    np.testing.assert_allclose(actual, desired, rtol=0, atol=rel * scale, err_msg=err_msg)


def assert_weights_close(actual, desired, *, rel: float = REL) -> None:
    """Weights are O(1): relative tolerance, plus an absolute one of rel·max|W| for entries near zero."""
    scale = float(np.nanmax(np.abs(desired))) if np.size(desired) else 1.0
    np.testing.assert_allclose(actual, desired, rtol=rel, atol=rel * scale)
