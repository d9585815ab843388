"""Adam (Kingma & Ba), with bias correction exactly as torch's ``Adam``:
    m ← β1 m + (1 − β1) g,  v ← β2 v + (1 − β2) g²,
    W ← W − η/(1 − β1^t) · m / (√v / √(1 − β2^t) + ε).

Its edge of stability is on the *preconditioned* sharpness λ_max(P⁻¹H), P = diag(√v̂ + ε) (Cohen et al.,
"Adaptive gradient methods at the edge of stability"), with threshold (2 + 2β1)/((1 − β1)η). The final
P of each network is kept (``precond``) so that the measure stage can compute it (Lanczos on
P^{-1/2} H P^{-1/2}); trajectories sample it along the way. β1, β2, ε are per network.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from dlnpipe.lazy import torch
from dlnpipe.steppers.first_order import FirstOrder
from dlnpipe.tensors import flatten


class Adam(FirstOrder):
    name = "adam"
    options = (*FirstOrder.options, "betas", "eps")
    per_network = MappingProxyType({"betas": (2,), "eps": ()})
    defaults = MappingProxyType({"betas": (0.9, 0.999), "eps": 1e-8})

    edge_on = "sharpness_precond"

    @classmethod
    def threshold(cls, lr, settings):
        """(2 + 2β1)/((1 − β1)η): the largest preconditioned sharpness at which Adam is stable."""
        beta1 = np.asarray(settings["beta1"], dtype=float)
        return (2 + 2 * beta1) / ((1 - beta1) * np.asarray(lr, dtype=float))

    def __init__(self, *, betas=defaults["betas"], eps=defaults["eps"], **kwargs):
        super().__init__(betas=betas, eps=eps, **kwargs)

    @classmethod
    def check(cls, name, value):
        if name == "betas":
            if value.ndim == 0 or value.shape[-1] != 2:
                raise ValueError(f"betas must be a pair (beta1, beta2), got shape {value.shape}")
            bad = value[~((value >= 0) & (value < 1))]
            if bad.size:
                raise ValueError(f"betas must be in [0, 1), got {bad.flat[0]:g}")
        elif (bad := value[~(value > 0)]).size:
            raise ValueError(f"eps must be > 0, got {bad.flat[0]:g}")
        return value

    def setup(self, state) -> None:
        b = self.opt.buffers
        b["m"], b["v"] = [torch.zeros_like(W) for W in state.layers], [torch.zeros_like(W) for W in state.layers]
        b["denom"] = [torch.ones_like(W) for W in state.layers]  # the last denominator √v̂ + ε (P's diagonal)
        size = sum(W[0].numel() for W in state.layers)
        self.out["precond"] = torch.full((state.size, size), float("nan"), dtype=torch.float64,
                                         device=state.idx.device)

    def update_(self, state, grads, step) -> None:
        o, b, t = self.opt.options, self.opt.buffers, self.t + 1
        b1, b2 = o["betas"][:, 0, None, None], o["betas"][:, 1, None, None]
        eps = o["eps"][:, None, None]
        size = (step / (1 - o["betas"][:, 0] ** t))[:, None, None]
        root2 = torch.sqrt(1 - b2 ** t)
        moving = (step != 0)[:, None, None]
        for k, (W, G) in enumerate(zip(state.layers, grads)):
            m = torch.where(moving, torch.lerp(b["m"][k], G, 1 - b1), b["m"][k])
            v = torch.where(moving, b["v"][k] * b2 + (1 - b2) * G * G, b["v"][k])
            denom = torch.where(moving, torch.sqrt(v) / root2 + eps, b["denom"][k])
            b["m"][k], b["v"][k], b["denom"][k] = m, v, denom
            W.sub_(torch.where(moving, size * (m / denom), 0.0))

    def precond(self, state):
        return flatten(self.opt.buffers["denom"])
