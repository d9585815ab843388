"""Gradient descent on deep linear networks by the compiled kernel ``linear.c`` (moments of the data).

Same layout and contract as :mod:`dlnpipe.kernels.activated`: the layers, the prefix c and (with one
dataset per network) Σ, w* and R* go lane-last, the kernel runs ``count`` full GD steps, and the
layers, ``alive`` and ``alive_steps`` come back in place.
"""

from __future__ import annotations

import ctypes

import torch

from dlnpipe import kernels
from dlnpipe.kernels import Signature
from dlnpipe.kernels.lanes import chunks, lanes, pack, pad, ptr, unpack_

# dlnpipe_steps(nchunks, L, steps, W, c, sigma, wstar, loss_opt, lr, cap, alive, alive_steps, value, moved)
SIGNATURES = {"dlnpipe_steps": Signature(ctypes.c_int, (ctypes.c_int, ctypes.c_int, ctypes.c_long,
                                                        *[ctypes.c_void_p] * 11))}


def library(dtype: torch.dtype, *, in_dim: int, width: int, out_last: int,
            per_network: bool) -> tuple[ctypes.CDLL | None, str]:
    """The kernel for this dtype and shape (one problem per network or a shared one), or None and why not."""
    return kernels.load("linear", SIGNATURES, libs=(), REAL="double" if dtype == torch.float64 else "float",
                        IN=in_dim, M=width, OUTL=out_last, SIGMA_LANES=int(per_network))


def gd_steps(lib, layers, c, prob, *, lr, alive, alive_steps, cap, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` GD steps of the batch in place; returns (the loss before the last step, whether the last step
    moved each network's weights), both (b,)."""
    b, dtype, width = layers[0].shape[0], layers[0].dtype, lanes(lib)
    nchunks = chunks(b, width)
    size = nchunks * width
    buffer, c_p = pack(layers, nchunks, width), pack([c], nchunks, width)
    if prob.batched:
        sigma, wstar = pack([prob.sigma], nchunks, width), pack([prob.w_star], nchunks, width)
        loss_opt = pad(torch.as_tensor(prob.loss_opt, dtype=dtype), size, 0.0)
    else:
        sigma, wstar = prob.sigma.to(dtype).contiguous(), prob.w_star.to(dtype).contiguous()
        loss_opt = torch.tensor([prob.loss_opt], dtype=dtype)
    lr_p, cap_p = pad(lr.to(dtype), size, 0.0), pad(cap.to(dtype), size, float("inf"))
    alive_p, steps_p = pad(alive.to(torch.uint8), size, 0), pad(alive_steps, size, 0)
    value, moved = torch.empty(size, dtype=dtype), torch.zeros(size, dtype=torch.uint8)
    rc = lib.dlnpipe_steps(nchunks, len(layers), count, ptr(buffer), ptr(c_p), ptr(sigma), ptr(wstar),
                           ptr(loss_opt), ptr(lr_p), ptr(cap_p), ptr(alive_p), ptr(steps_p), ptr(value),
                           ptr(moved))
    if rc != 0:
        raise MemoryError("the linear kernel could not allocate its work space")
    unpack_(buffer, layers, width)
    alive.copy_(alive_p[:b].bool())
    alive_steps.copy_(steps_p[:b])
    return value[:b], moved[:b].bool()
