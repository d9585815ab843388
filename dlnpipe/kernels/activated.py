"""Gradient descent on small-init nonlinear networks by the compiled kernel ``activated.c``.

The batch's layers (b, out, in) are laid out lane-last (:mod:`dlnpipe.kernels.lanes`), the kernel
runs ``count`` full GD steps, and the layers, ``alive`` and ``alive_steps`` are written back in place.
Networks never share a lane, so a network's result does not depend on the batch it is in.
"""

from __future__ import annotations

import ctypes

import torch

from dlnpipe import kernels
from dlnpipe.kernels import Activation, Signature
from dlnpipe.kernels.lanes import chunks, lanes, pack, pad, ptr, unpack_

# dlnpipe_steps(nchunks, L, N, steps, W, X, y, lr, cap, alive, alive_steps, value, first, moved, NT, Xt, yt,
#               first_test);
# dlnpipe_activation(count, z, a, da)
SIGNATURES = {
    "dlnpipe_steps": Signature(ctypes.c_int, (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long,
                                              *[ctypes.c_void_p] * 10, ctypes.c_int, *[ctypes.c_void_p] * 3)),
    "dlnpipe_activation": Signature(None, (ctypes.c_int, *[ctypes.c_void_p] * 3)),
}


def library(activation: Activation, dtype: torch.dtype, width: int, d: int) -> tuple[ctypes.CDLL | None, str]:
    """The kernel for this activation, dtype and shape, or None and why not."""
    double = dtype == torch.float64
    return kernels.load("activated", SIGNATURES,
                        libs=("-lmvec", "-lm") if double and activation is Activation.GELU else ("-lm",),
                        REAL="double" if double else "float", REAL_IS_DOUBLE=int(double), M=width, D=d,
                        **Activation(activation).defines())


def gd_steps(lib, layers, X, y, *, lr, alive, alive_steps, cap, count: int,
             test=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``count`` GD steps of the batch in place; returns (the loss before the last step, whether the last step
    moved each network's weights, the loss before the first step, and with ``test`` = (X_test, y_test) the
    test loss before the first step, else None), each (b,)."""
    b, dtype, width = layers[0].shape[0], layers[0].dtype, lanes(lib)
    nchunks = chunks(b, width)
    size = nchunks * width
    buffer = pack(layers, nchunks, width)
    lr_p, cap_p = pad(lr.to(dtype), size, 0.0), pad(cap.to(dtype), size, float("inf"))
    alive_p, steps_p = pad(alive.to(torch.uint8), size, 0), pad(alive_steps, size, 0)
    value, first = torch.empty(size, dtype=dtype), torch.empty(size, dtype=dtype)
    moved = torch.zeros(size, dtype=torch.uint8)
    X, y = X.to(dtype).contiguous(), y.to(dtype).contiguous()
    Xt, yt = (X[:0], y[:0]) if test is None else (test[0].to(dtype).contiguous(), test[1].to(dtype).contiguous())
    first_test = torch.empty(size, dtype=dtype)
    rc = lib.dlnpipe_steps(nchunks, len(layers), X.shape[0], count, ptr(buffer), ptr(X), ptr(y), ptr(lr_p),
                           ptr(cap_p), ptr(alive_p), ptr(steps_p), ptr(value), ptr(first), ptr(moved),
                           Xt.shape[0], ptr(Xt), ptr(yt), ptr(first_test))
    if rc != 0:
        raise MemoryError("the activated kernel could not allocate its work space")
    unpack_(buffer, layers, width)
    alive.copy_(alive_p[:b].bool())
    alive_steps.copy_(steps_p[:b])
    return value[:b], moved[:b].bool(), first[:b], None if test is None else first_test[:b]
