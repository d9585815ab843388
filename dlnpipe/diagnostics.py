"""Structure of trained layers: small init should give rank-one, aligned layers
(docs/theory.md#gradient-flow-from-small-initialisation).

* ``sv_ratio[k]`` = σ₂/σ₁ of W_{k+1} (NaN for a layer with a single row or column);
* ``alignment[k]`` = |⟨v_{k+2}, u_{k+1}⟩|, the top right singular vector of W_{k+2} against the top
  left singular vector of W_{k+1} (1 = aligned);
* ``input_alignment`` = |⟨v_1, w*/‖w*‖⟩|, the first layer's top right singular vector against w*.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlnpipe.networks import Weights
from dlnpipe.result import TrainResult


@dataclass(frozen=True)
class Structure:
    sv_ratio: np.ndarray  # (B, L)
    alignment: np.ndarray  # (B, L-1)
    input_alignment: np.ndarray  # (B,)


def structure(weights, w_star: np.ndarray | None = None) -> Structure:
    """Diagnostics for one network (:class:`Weights`), a list of them, or every network of a TrainResult."""
    if isinstance(weights, TrainResult):
        layers = weights.layers  # list of (B, out, in)
    elif isinstance(weights, Weights):
        layers = [W[None] for W in weights.layers]
    elif isinstance(weights, (list, tuple)) and weights and all(isinstance(w, Weights) for w in weights):
        layers = [np.stack([w.layers[k] for w in weights]) for k in range(weights[0].depth)]
    else:
        raise ValueError(f"weights must be Weights, a list of them or a TrainResult, got {type(weights).__name__}")
    B, L = layers[0].shape[0], len(layers)
    ratio = np.full((B, L), np.nan)
    align = np.full((B, max(L - 1, 0)), np.nan)
    in_align = np.full(B, np.nan)
    finite = np.all([np.isfinite(W).reshape(B, -1).all(1) for W in layers], axis=0)
    tops = []
    for k, W in enumerate(layers):
        Wf = np.where(finite[:, None, None], W, 0.0)
        U, s, Vh = np.linalg.svd(Wf, full_matrices=False)
        if s.shape[1] >= 2:
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio[:, k] = s[:, 1] / s[:, 0]
        tops.append((U[:, :, 0], Vh[:, 0, :]))
    for k in range(L - 1):
        align[:, k] = np.abs(np.einsum("bi,bi->b", tops[k + 1][1], tops[k][0]))
    if w_star is not None:
        u0 = np.zeros(layers[0].shape[2])
        u0[: w_star.size] = w_star / np.linalg.norm(w_star)
        in_align = np.abs(tops[0][1] @ u0)
    ratio[~finite], align[~finite], in_align[~finite] = np.nan, np.nan, np.nan
    return Structure(sv_ratio=ratio, alignment=align, input_alignment=in_align)
