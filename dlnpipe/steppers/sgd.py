"""Mini-batch SGD and label noise: W ← W − η ∇R_t, with R_t the loss on step t's mini-batch and
labels y + σξ_t (ξ_t ~ N(0, I), fresh at every step).

Each network draws its own epochs: a permutation of the n samples per epoch from its seed, cut into
⌊n/b⌋ mini-batches of b samples (the remaining n mod b are left out of that epoch); b = n is
gradient descent and σ = 0 no noise (the same iterates, to rounding). ``optimizer: gd`` with
``label_noise`` is this stepper with b = n. Batch size and σ are per network. The draws are
counter-based hashes (:mod:`dlnpipe.steppers.sampling`): a network's run does not depend on its batch.

Linear nets keep their layer recursion; only the data term 2Xᵀ(ω ⊙ (Xw − ỹ)) is formed from the
samples (O(n d) per network and step) instead of from Σ. The convergence test is the trainer's, at
the last iterate: with n < d every mini-batch loss vanishes at the interpolating minimizers and SGD
converges there; with n > d and noisy data the iterates keep fluctuating (a status "failed" then
means "still moving"), and the average of the last iterates (``*_avg``) is the point to look at.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from dlnpipe.lazy import torch
from dlnpipe.steppers import sampling
from dlnpipe.steppers.first_order import FirstOrder


class SGD(FirstOrder):
    name = "sgd"
    options = (*FirstOrder.options, "batch_size", "label_noise")
    per_network = MappingProxyType({"batch_size": (), "label_noise": ()})
    defaults = MappingProxyType({"batch_size": None, "label_noise": 0.0})  # batch_size None: n, the whole training set
    stochastic = True

    def __init__(self, *, batch_size=None, label_noise=0.0, **kwargs):
        values = {"label_noise": label_noise}
        if batch_size is not None:
            values["batch_size"] = batch_size
        super().__init__(**values, **kwargs)

    @property
    def needs_data(self) -> bool:
        return True

    @classmethod
    def check(cls, name, value):
        if name == "batch_size":
            bad = value[~((value >= 1) & (value == np.round(value)))]
            if bad.size:
                raise ValueError(f"batch_size must be an integer >= 1, got {bad.flat[0]:g}")
        elif (bad := value[~(value >= 0)]).size:
            raise ValueError(f"label_noise must be >= 0, got {bad.flat[0]:g}")
        return value

    def setup(self, state) -> None:
        n = state.prob.X.shape[0]
        if "batch_size" in self.values and (big := self.values["batch_size"] > n).any():
            raise ValueError(f"batch_size must be <= n ({n}), got {self.values['batch_size'][big][0]:g}")
        o = self.opt.options
        o["batch_size"] = o["batch_size"].to(torch.int64) if "batch_size" in o else \
            torch.full((state.size,), n, dtype=torch.int64, device=state.idx.device)

    def update_(self, state, grads, step) -> None:
        eta = step[:, None, None]
        for W, G in zip(state.layers, grads):
            W.sub_(eta * G)

    def gradient(self, state):
        o, seed, prob, t = self.opt.options, self.opt.seed, state.prob, self.t
        X, y = prob.X, prob.y
        B, n = state.size, X.shape[0]
        b = o["batch_size"]
        if bool((b == n).all()):
            weights = torch.full((B, n), 1.0 / n, dtype=X.dtype, device=X.device)
        else:
            per_epoch = n // b
            rank = sampling.permutation_ranks(seed, t // per_epoch, n)
            first = ((t % per_epoch) * b)[:, None]
            weights = ((rank >= first) & (rank < first + b[:, None])).to(X.dtype) / b[:, None].to(X.dtype)
        labels = y.expand(B, n)
        if bool((o["label_noise"] > 0).any()):
            labels = labels + o["label_noise"][:, None] * sampling.normal(seed, torch.full_like(b, t), n, X.dtype)
        return state.arch.sample_gradient(state.layers, state.c, prob, weights, labels)
