"""Heavy-ball momentum, in the form of torch's ``SGD(momentum=β)``: v ← βv + ∇R, W ← W − ηv, v(0) = 0.

Its stability threshold for the sharpness is (2 + 2β)/η (a quadratic of curvature λ is stable under
this map iff ηλ < 2 + 2β); β = 0 is gradient descent. β is per network.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from dlnpipe.lazy import torch
from dlnpipe.steppers.first_order import FirstOrder


class HeavyBall(FirstOrder):
    name = "heavy_ball"
    options = (*FirstOrder.options, "momentum")
    per_network = MappingProxyType({"momentum": ()})
    defaults = MappingProxyType({"momentum": 0.9})

    @classmethod
    def threshold(cls, lr, settings):
        """(2 + 2β)/η: the largest sharpness at which heavy ball is stable."""
        return (2 + 2 * np.asarray(settings["momentum"], dtype=float)) / np.asarray(lr, dtype=float)

    def __init__(self, *, momentum=defaults["momentum"], **kwargs):
        super().__init__(momentum=momentum, **kwargs)

    @classmethod
    def check(cls, name, value):
        bad = value[~((value >= 0) & (value < 1))]
        if bad.size:
            raise ValueError(f"momentum must be in [0, 1), got {bad.flat[0]:g}")
        return value

    def setup(self, state) -> None:
        self.opt.buffers["velocity"] = [torch.zeros_like(W) for W in state.layers]

    def update_(self, state, grads, step) -> None:
        beta, eta = self.opt.options["momentum"][:, None, None], step[:, None, None]
        moving = (step != 0)[:, None, None]
        velocity = self.opt.buffers["velocity"]
        for k, (W, G) in enumerate(zip(state.layers, grads)):
            velocity[k] = torch.where(moving, beta * velocity[k] + G, velocity[k])
            W.sub_(torch.where(moving, eta * velocity[k], 0.0))
