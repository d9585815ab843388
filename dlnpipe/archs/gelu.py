"""``gelu``: the paper's GELU variant (its appendix): GELU after every layer but the last, small init."""

from __future__ import annotations

from dlnpipe.archs.activated import ActivatedArchitecture
from dlnpipe.kernels import Activation
from dlnpipe.lazy import torch


class Gelu(ActivatedArchitecture):
    name = "gelu"
    kernel_activation = Activation.GELU
    description = "small init, GELU after every layer but the last (the paper's appendix)"

    def activation(self, z):
        return torch.nn.functional.gelu(z)

    def activation_backward(self, dh, z):
        return torch.ops.aten.gelu_backward(dh, z)


GELU = Gelu()
