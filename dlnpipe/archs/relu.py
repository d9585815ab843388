"""``relu``: ReLU after every layer but the last, small init (beyond the paper).

ReLU networks are piecewise linear in their inputs: the loss is piecewise polynomial in the
weights, smooth wherever no pre-activation of a training input is exactly 0, and its Hessian there
is what double backward computes (σ'' = 0 almost everywhere).
"""

from __future__ import annotations

from dlnpipe.archs.activated import ActivatedArchitecture
from dlnpipe.kernels import Activation
from dlnpipe.lazy import torch


class Relu(ActivatedArchitecture):
    name = "relu"
    kernel_activation = Activation.RELU
    description = "small init, ReLU after every layer but the last"

    def activation(self, z):
        return torch.relu(z)

    def activation_backward(self, dh, z):
        return torch.ops.aten.threshold_backward(dh, z, 0.0)  # dh where z > 0, else 0 (autograd's rule)


RELU = Relu()
