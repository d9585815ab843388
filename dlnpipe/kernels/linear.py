"""Gradient descent and gradient flow on deep linear networks by the compiled kernel ``linear.c`` (moments of
the data).

GD (:func:`gd_steps`), same layout and contract as :mod:`dlnpipe.kernels.activated`: the layers, the prefix c
and (with one dataset per network) Σ, w* and R* go lane-last, the kernel runs ``count`` full GD steps, and the
layers, ``alive`` and ``alive_steps`` come back in place. The flow (:func:`flow`): the whole integration of
:mod:`dlnpipe.steppers.flow` in one call, networks in their own layout (the kernel deals them into its lanes
in turn), its samples and the final state back.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from dlnpipe import kernels
from dlnpipe.kernels import Signature
from dlnpipe.kernels.lanes import chunks, lanes, pack, pad, ptr, unpack_

# dlnpipe_steps(nchunks, L, steps, W, c, sigma, wstar, loss_opt, lr, cap, alive, alive_steps, value, first,
#               moved);
# dlnpipe_flow(B, L, NT, max_steps, tol, W, c, sigma, wstar, rec, T, stop, cap, w_rec, ex_rec, nrec, excess, t,
#              accepted, evals, bad)
SIGNATURES = {
    "dlnpipe_steps": Signature(ctypes.c_int, (ctypes.c_int, ctypes.c_int, ctypes.c_long, *[ctypes.c_void_p] * 12)),
    "dlnpipe_flow": Signature(ctypes.c_int, (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long,
                                             *[ctypes.c_void_p] * 17)),
}


@dataclass
class FlowOutcome:
    """What :func:`flow` returns, per network (B, ...): the final weights flattened (B, P), the regressors and
    R − R* at the record times it reached (B, NT, in_dim) and (B, NT), their number (B,) (samples 0 .. nrec − 1),
    and the final R − R*, time, accepted steps, field evaluations and divergence flag."""

    weights: torch.Tensor
    w_rec: torch.Tensor
    ex_rec: torch.Tensor
    nrec: torch.Tensor
    excess: torch.Tensor
    t: torch.Tensor
    accepted: torch.Tensor
    evaluations: torch.Tensor
    diverged: torch.Tensor


def library(dtype: torch.dtype, *, in_dim: int, width: int, out_last: int,
            per_network: bool) -> tuple[ctypes.CDLL | None, str]:
    """The kernel for this dtype and shape (one problem per network or a shared one), or None and why not."""
    double = dtype == torch.float64
    return kernels.load("linear", SIGNATURES, libs=("-lm",), REAL="double" if double else "float",
                        REAL_IS_DOUBLE=int(double), IN=in_dim, M=width, OUTL=out_last, SIGMA_LANES=int(per_network))


def gd_steps(lib, layers, c, prob, *, lr, alive, alive_steps, cap, count: int,
             test: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
    """``count`` GD steps of the batch in place; returns (the loss before the last step, whether the last step
    moved each network's weights, the loss before the first step, None: a linear net's test loss is its
    regressor's, from the moments), each (b,)."""
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
    value, first = torch.empty(size, dtype=dtype), torch.empty(size, dtype=dtype)
    moved = torch.zeros(size, dtype=torch.uint8)
    rc = lib.dlnpipe_steps(nchunks, len(layers), count, ptr(buffer), ptr(c_p), ptr(sigma), ptr(wstar),
                           ptr(loss_opt), ptr(lr_p), ptr(cap_p), ptr(alive_p), ptr(steps_p), ptr(value),
                           ptr(first), ptr(moved))
    if rc != 0:
        raise MemoryError("the linear kernel could not allocate its work space")
    unpack_(buffer, layers, width)
    alive.copy_(alive_p[:b].bool())
    alive_steps.copy_(steps_p[:b])
    return value[:b], moved[:b].bool(), first[:b], None


def flow(lib, weights, c, prob, *, depth: int, rec, T, stop, cap, max_steps: int, rtol: float,
         atol: float) -> FlowOutcome:
    """The gradient flow of every network of ``depth`` layers from ``weights`` (B, P; the layers flattened in order)
    with prefix ``c``
    (B, 1, out_L) on ``prob``, recorded at times ``rec`` (B, NT), to its horizon ``T`` (B,), by the rules of
    :mod:`dlnpipe.steppers.flow` (its ``stop`` and divergence ``cap`` on R − R*, (B,))."""
    B, P = weights.shape
    dtype = weights.dtype

    def real(x):
        return torch.as_tensor(x, dtype=dtype).contiguous()

    NT = rec.shape[1]
    y, rec = real(weights).clone(), real(rec)
    c = real(c.reshape(B, -1))
    sigma, wstar = real(prob.sigma), real(prob.w_star)
    T, stop, cap, tol = real(T), real(stop), real(cap), real([rtol, atol])
    in_dim = wstar.shape[-1]
    w_rec = torch.full((B, NT, in_dim), float("nan"), dtype=dtype)
    ex_rec = torch.full((B, NT), float("nan"), dtype=dtype)
    nrec, accepted, evals = (torch.zeros(B, dtype=torch.int64) for _ in range(3))
    excess, t, bad = torch.empty(B, dtype=dtype), torch.empty(B, dtype=dtype), torch.zeros(B, dtype=torch.uint8)
    rc = lib.dlnpipe_flow(B, depth, NT, int(max_steps),
                          ptr(tol), ptr(y), ptr(c), ptr(sigma), ptr(wstar), ptr(rec), ptr(T), ptr(stop), ptr(cap),
                          ptr(w_rec), ptr(ex_rec), ptr(nrec), ptr(excess), ptr(t), ptr(accepted), ptr(evals),
                          ptr(bad))
    if rc != 0:
        raise MemoryError("the linear kernel could not allocate the flow's work space")
    return FlowOutcome(weights=y, w_rec=w_rec, ex_rec=ex_rec, nrec=nrec, excess=excess, t=t, accepted=accepted,
                       evaluations=evals, diverged=bad.bool())
