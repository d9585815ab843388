"""What every architecture tells the rest of dlnpipe, and the defaults most of them share.

An architecture is one object, defined in a module of its own in this package and listed once in
the registry (:mod:`dlnpipe.archs`). Everything else asks it; nobody compares its name.

* **what it is**: ``name``, ``description``; ``linear`` (f(x) = w_prodᵀx: the loss depends on the
  data only through moments, the exact sharpness formula (docs/theory.md#the-hessian-at-a-minimizer) and
  the paper's bounds apply, networks on different datasets share a batch); ``small_init`` (layers drawn
  N(0, s²) with no identity: the setting of the small-init theorem,
  docs/theory.md#gradient-flow-from-small-initialisation, and the one ``scale_unit`` rescales);
  ``has_projection`` (a fixed, untrained row p in front of the layers);
* **its shapes and initialisation** (numpy; the default: W_1 (m, d), W_2..W_{L−1} (m, m), W_L (1, m),
  entries N(0, s²), no 1/√m factor, docs/theory.md#architectures);
* **its batched maths** on torch tensors: the loss as a differentiable expression (Hessian-vector
  products, dense Hessians), a hand-written loss and gradient, one gradient step in place, the
  test loss. A batch holds the layers as tensors W_k of shape (B, out_k, in_k) and the row prefix
  c of shape (B, 1, out_L) (c = pᵀ with a projection, 1 otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from dlnpipe._checks import check_int
from dlnpipe.lazy import torch

if TYPE_CHECKING:  # the config and the grid read this module: torch is imported for the type checker only
    from torch import Tensor

    from dlnpipe.problem import Problem

Layers: TypeAlias = "Sequence[Tensor]"  # W_1 .. W_L, each (B, out_k, in_k)
FusedSteps: TypeAlias = "Callable[..., tuple[Tensor, Tensor, Tensor, Tensor | None]]"  # Architecture.fused_steps
FusedFlow: TypeAlias = "Callable[..., Any]"  # see Architecture.fused_flow


@dataclass(frozen=True)
class Evaluation:
    """The loss of the live batch at its current point and what one gradient step needs from it.

    value: (b,) training loss R; w: (b, in_dim) the regressors when the forward pass had them on
    the way (else None); parts: the step's factors, (b, ...) tensors or (nested) lists of them.
    """

    value: Tensor
    w: Tensor | None
    parts: Any  # a tensor, or nested lists and tuples of them: the architecture's own

    def take(self, keep) -> Evaluation:
        """The evaluation of the rows selected by ``keep``."""
        return Evaluation(self.value[keep], None if self.w is None else self.w[keep], _take(self.parts, keep))


def _take(x, keep):
    if isinstance(x, (list, tuple)):
        return type(x)(_take(v, keep) for v in x)
    return x[keep]


class Architecture:
    name = ""
    description = ""
    linear = False
    small_init = True
    has_projection = False

    def __repr__(self) -> str:
        return f"<architecture {self.name}>"

    # -- shapes and initialisation (numpy) ---------------------------------------------------------

    def width_error(self, width: int, d: int) -> str | None:
        """Why this width cannot take inputs of dimension d (None: it can)."""
        return None

    def check(self, *, depth, width, d) -> tuple[int, int, int]:
        """(depth, width, d) as ints, refusing values this architecture cannot build."""
        depth = check_int("depth", depth, minimum=1)
        width = check_int("width", width, minimum=1)
        d = check_int("d", d, minimum=1)
        error = self.width_error(width, d)
        if error:
            raise ValueError(error)
        return depth, width, d

    def in_dim(self, width: int, d: int) -> int:
        """Input dimension of the first layer (d, unless inputs are padded)."""
        return d

    def layer_shapes(self, *, depth: int, width: int, d: int) -> list[tuple[int, int]]:
        """Shapes (out, in) of W_1..W_L."""
        dims = [d] + [width] * (depth - 1) + [1]
        return [(dims[k + 1], dims[k]) for k in range(depth)]

    def init_arrays(self, *, depth: int, width: int, d: int, scale: float, seed: int,
                    p_seed: int = 0) -> list[np.ndarray]:
        """Initial layers (and p last, with a projection) of one network: entries N(0, s²)."""
        rng = np.random.default_rng(seed)
        return [scale * rng.standard_normal(s) for s in self.layer_shapes(depth=depth, width=width, d=d)]

    def bytes_per_network(self, *, depth: int, width: int, d: int, n: int, itemsize: int) -> int:
        """Device memory one network needs while training: weights, their copy for the fixed-point
        check, the update and the output buffer (4 × P), plus the forward pass's work space."""
        params = depth * max(width, d) ** 2
        return (4 * params + self.work_entries(depth=depth, width=width, d=d, n=n)) * itemsize + 4096

    def step_flops(self, *, depth: int, width: int, d: int, n: int) -> float:
        """Floating-point operations of one gradient step of one network: the cost model by which the
        workflow orders and splits its jobs. Linear nets: two row recursions through the layers, the
        update's outer products and Σ(w − w*), whatever n is."""
        inner = sum(o * i for o, i in self.layer_shapes(depth=depth, width=width, d=d))
        return 2.0 * (3 * inner + self.in_dim(width, d) ** 2)

    def work_entries(self, *, depth: int, width: int, d: int, n: int) -> int:
        """Entries of the forward pass kept for the backward one (row vectors by default)."""
        return 4 * depth * max(width, d)

    # -- batched maths (torch) ----------------------------------------------------------------------

    def problem(self, datasets: list, *, in_dim: int, dtype, device, with_data: bool = False):
        """The batch's problem: one dataset for all networks, or one per network (linear nets, moments
        only); ``with_data``: the samples too, whatever the architecture needs."""
        from dlnpipe.problem import Problem

        if all(ds is datasets[0] for ds in datasets):
            return Problem.from_dataset(datasets[0], in_dim=in_dim, dtype=dtype, device=device,
                                        with_data=with_data or not self.linear)
        if not self.linear or with_data:
            raise ValueError(f"networks on different datasets are batched for linear nets only (trained on the "
                             f"moments), not arch {self.name!r}" + (" with mini-batches or label noise" if with_data
                                                                     else ""))
        return Problem.stack(datasets, in_dim=in_dim, dtype=dtype, device=device)

    @staticmethod
    def regressor(layers: Layers, c: Tensor) -> Tensor:
        """w_prod = (c W_L ⋯ W_1)ᵀ for each network, shape (B, in_dim)."""
        row = c
        for W in reversed(layers):
            row = torch.bmm(row, W)
        return row[:, 0, :]

    def loss(self, layers: Layers, c: Tensor, prob: Problem) -> Tensor:
        """Per-network training loss R, shape (B,), as a differentiable expression."""
        raise NotImplementedError

    def test_loss(self, layers: Layers, c: Tensor, prob: Problem, w: Tensor) -> Tensor:
        """Per-network test loss, shape (B,); ``w`` is the batch's regressors."""
        raise NotImplementedError

    def evaluate(self, layers: Layers, c: Tensor, prob: Problem) -> Evaluation:
        """The loss and what :meth:`descend_` needs, at the batch's current point."""
        raise NotImplementedError

    def descend_(self, layers: Layers, ev: Evaluation, lr: Tensor, alive: Tensor) -> None:
        """One gradient step in place, W ← W − η ∇R, with η = lr (b,) where ``alive`` and 0 elsewhere."""
        raise NotImplementedError

    def gradient(self, layers: Layers, c: Tensor, prob: Problem) -> tuple[list[Tensor], Tensor]:
        """(∂R/∂W_k for every layer as (B, out_k, in_k) tensors, R − R* (B,))."""
        raise NotImplementedError

    def sample_gradient(self, layers: Layers, c: Tensor, prob: Problem, weights: Tensor,
                        labels: Tensor) -> tuple[list[Tensor], Tensor]:
        """(∂R_ω/∂W_k for every layer, R_ω (B,)) of the weighted loss R_ω = Σ_i ω_i (f(x_i) − ỹ_i)² with
        one weight row ω (B, n) and one label row ỹ (B, n) per network: a mini-batch (ω = 1/b on its
        samples, 0 elsewhere), noisy labels, or both. Needs the problem's data (X, y)."""
        raise NotImplementedError

    def exact_topk(self, dataset, nets, *, k: int = 1) -> np.ndarray:
        """The Hessian's top-k eigenvalues at global minimizers by the exact formula (linear nets only)."""
        raise ValueError(f"method 'exact' holds for linear networks only, not arch {self.name!r}")

    def minimizer_trace(self, dataset, nets) -> np.ndarray:
        """The Hessian's trace at global minimizers by the closed form (linear nets only)."""
        raise ValueError(f"method 'minimizer' holds for linear networks only, not arch {self.name!r}")

    def fused_steps(self, layers: Layers, c: Tensor, prob: Problem) -> tuple[FusedSteps | None, str]:
        """The compiled GD step for this batch (its layers' device, dtype and shapes, its problem), decided
        once per batch, or None and why there is none. The step, called as ``step(layers, c, prob, *, lr,
        alive, alive_steps, cap, count, test=False)``, takes ``count`` full GD steps in place, each by the rules of
        :mod:`dlnpipe.steppers.base`: value = R(W); alive &= value <= cap; alive_steps += alive;
        W ← W − η ∇R (η = lr where alive, else 0); it returns (the loss before the last step, whether the
        last step moved each network's weights, the loss before the first step, and with ``test=True`` the
        test loss before the first step where the kernel computes it, else None), each (b,)."""
        return None, f"arch {self.name} has no compiled step"

    def fused_flow(self, layers: Layers, c: Tensor, prob: Problem) -> tuple[FusedFlow | None, str]:
        """The compiled gradient flow for this batch, decided once per batch, or None and why there is none. Called
        as ``flow(weights, c, prob, *, depth, rec, T, stop, cap, max_steps, rtol, atol)`` with the layers
        flattened (B, P), it integrates every network by the solver and rules of :mod:`dlnpipe.steppers.flow`
        and returns a :class:`dlnpipe.kernels.linear.FlowOutcome`."""
        return None, f"arch {self.name} has no compiled flow"
