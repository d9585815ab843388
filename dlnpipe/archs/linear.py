"""Deep *linear* networks: the maths shared by the small and residual architectures.

The loss depends on the data only through moments (docs/theory.md#conventions):
    R(w) = R(w*) + (w − w*)ᵀ Σ (w − w*),
so a step costs O(L m²) per network whatever n is. The gradient is written out by hand: with rows
b_k = c W_L ⋯ W_{k+1} (b_L = c) and h_k = g W_1ᵀ ⋯ W_{k−1}ᵀ (h_1 = g = 2(w − w*)Σ),
    ∂R/∂W_k = b_kᵀ h_k   (an outer product),
which needs two row-vector recursions through the layers and no matrix-matrix product.

At a global minimizer the Hessian is its Gauss–Newton part and the sharpness has a closed form
(docs/theory.md#the-hessian-at-a-minimizer), :meth:`LinearArchitecture.exact_topk`.
"""

from __future__ import annotations

import numpy as np

from dlnpipe.archs.base import Architecture, Evaluation
from dlnpipe.lazy import torch


def row_times(v, M):
    """Row vectors times matrices: (B, n) @ (n, n) or, one matrix per network, (B, n) @ (B, n, n) -> (B, n)."""
    return v @ M if M.ndim == 2 else torch.bmm(v[:, None, :], M)[:, 0]


class LinearArchitecture(Architecture):
    linear = True

    @staticmethod
    def suffix_rows(layers, c):
        """Rows b_k = c W_L ⋯ W_{k+1} for k = 0..L (b_L = c); b_0 = c W_L ⋯ W_1 is w_prodᵀ. Shapes (B, 1, ·)."""
        rows = [c]
        for W in reversed(layers):
            rows.append(torch.bmm(rows[-1], W))
        return rows[::-1]

    @staticmethod
    def excess_loss(w, prob):
        """(w − w*)ᵀ Σ (w − w*) = R(w) − R(w*) for w of shape (B, in_dim); accurate near the optimum."""
        e = w - prob.w_star
        return (row_times(e, prob.sigma) * e).sum(-1)

    def loss(self, layers, c, prob):
        return prob.loss_opt + self.excess_loss(self.regressor(layers, c), prob)

    def test_loss(self, layers, c, prob, w):
        """R_test(w) = wᵀ Σ_test w − 2 wᵀ X_testᵀy_test/n_test + y_testᵀy_test/n_test, shape (B,)."""
        return (row_times(w, prob.sigma_test) * w).sum(-1) - 2 * (w * prob.xty_test).sum(-1) + prob.yty_test

    def forward(self, layers, c, prob):
        """(rows, w, g, excess): rows[k] = b_k (B, 1, out_k) for k = 0..L (rows[0] = w_prodᵀ), w (B, in_dim)
        the regressors, g = ∂R/∂w = 2 Σ (w − w*) (B, in_dim), excess = R − R* (B,)."""
        rows = self.suffix_rows(layers, c)
        w = rows[0][:, 0, :]
        e = w - prob.w_star
        g = 2 * row_times(e, prob.sigma)
        excess = 0.5 * (g * e).sum(-1)
        return rows, w, g, excess

    def evaluate(self, layers, c, prob) -> Evaluation:
        rows, w, g, excess = self.forward(layers, c, prob)
        return Evaluation(value=prob.loss_opt + excess, w=w, parts=(rows, g))

    def descend_(self, layers, ev: Evaluation, lr, alive) -> None:
        """W_k ← W_k − b_kᵀ h_k with h_1 = η ∂R/∂w; h_{k+1} = h_k W_kᵀ is taken before W_k moves, so
        every layer sees the same (old) point. The masked product zeroes a non-finite gradient too."""
        rows, g = ev.parts
        h = torch.where(alive[:, None], lr[:, None] * g, 0.0)[:, None, :]
        for k, W in enumerate(layers):
            h_next = torch.bmm(h, W.mT) if k + 1 < len(layers) else h
            W.baddbmm_(rows[k + 1].mT, h, alpha=-1.0)
            h = h_next

    @staticmethod
    def backward(layers, rows, g):
        """∂R/∂W_k = b_kᵀ h_k for every layer, from the rows b_k and g = ∂R/∂w (B, in_dim)."""
        h = g[:, None, :]
        grads = []
        for k, W in enumerate(layers):
            grads.append(torch.bmm(rows[k + 1].mT, h))
            if k + 1 < len(layers):
                h = torch.bmm(h, W.mT)
        return grads

    def gradient(self, layers, c, prob):
        rows, _, g, excess = self.forward(layers, c, prob)
        return self.backward(layers, rows, g), excess

    def sample_gradient(self, layers, c, prob, weights, labels):
        """The data term from the samples themselves: r = X w − labels (B, n), R_ω = Σ_i ω_i r_i²,
        ∂R_ω/∂w = 2 Xᵀ(ω ⊙ r) (zero on padded inputs), then the same layer recursion."""
        rows = self.suffix_rows(layers, c)
        w = rows[0][:, 0, :]
        X = prob.X
        r = w[:, : X.shape[1]] @ X.T - labels
        g = torch.zeros_like(w)
        g[:, : X.shape[1]] = 2 * (weights * r) @ X
        return self.backward(layers, rows, g), (weights * r * r).sum(-1)

    @staticmethod
    def _kernel(layers, c, prob):
        """The compiled kernel dlnpipe/kernels/linear.c for this batch's dtype and shapes, or None and why not."""
        if layers[0].device.type != "cpu":
            return None, "the compiled kernels run on the CPU"
        from dlnpipe.kernels import linear

        width = layers[0].shape[1] if len(layers) > 1 else c.shape[2]
        return linear.library(layers[0].dtype, in_dim=layers[0].shape[2], width=width, out_last=c.shape[2],
                              per_network=prob.batched)

    def _bound(self, layers, c, prob, function: str):
        """``dlnpipe.kernels.linear.<function>`` with this batch's kernel bound to it, or None and why not."""
        from dlnpipe.kernels import linear

        lib, why = self._kernel(layers, c, prob)
        if lib is None:
            return None, why

        def call(*args, **kw):
            return getattr(linear, function)(lib, *args, **kw)

        return call, ""

    def fused_steps(self, layers, c, prob):
        """The compiled step (dlnpipe/kernels/linear.c): the same recursions for a SIMD register of networks
        at once, on the CPU."""
        return self._bound(layers, c, prob, "gd_steps")

    def fused_flow(self, layers, c, prob):
        """The compiled flow (dlnpipe/kernels/linear.c): the field from the same recursions, the whole solver in
        C, a SIMD register of networks at a time, on the CPU."""
        return self._bound(layers, c, prob, "flow")

    @staticmethod
    def gauss_newton(dataset, net) -> np.ndarray:
        """K = Σ_k ‖b_k‖² A_kᵀA_k (d, d) of one network (numpy, float64): J Jᵀ for J = ∂w_prod/∂θ, so that
        at a global minimizer (Xᵀr = 0) the Hessian is 2JᵀΣJ (docs/theory.md#the-hessian-at-a-minimizer).
        A_k = W_{k−1} ⋯ W_1 E (E: the zero padding of the inputs, identity unless m > d), b_k = c W_L ⋯ W_{k+1}."""
        layers = net.layers
        rows = [net.prefix()]
        for W in reversed(layers):
            rows.append(rows[-1] @ W)
        rows = rows[::-1]  # rows[k] = b_k (1, out_k), rows[L] = c
        A = np.eye(layers[0].shape[1])[:, : dataset.d]  # E: (in_dim, d)
        K = np.zeros((dataset.d, dataset.d))
        for j, W in enumerate(layers):
            K += float((rows[j + 1] ** 2).sum()) * (A.T @ A)
            A = W @ A
        return K

    @classmethod
    def exact_topk(cls, dataset, nets, *, k: int = 1) -> np.ndarray:
        """Top-k of 2 Σ^{1/2} K Σ^{1/2} for each network: the Hessian's top eigenvalues at a global minimizer."""
        root = dataset.sigma_sqrt()
        out = np.full((len(nets), k), np.nan)
        for i, net in enumerate(nets):
            M = root @ cls.gauss_newton(dataset, net) @ root
            top = np.linalg.eigvalsh((M + M.T) / 2)[::-1][:k]
            out[i, : top.size] = 2 * top
        return out

    @classmethod
    def minimizer_trace(cls, dataset, nets) -> np.ndarray:
        """2 tr(Σ K) for each network: the Hessian's trace at a global minimizer."""
        return np.array([2 * float(np.sum(dataset.sigma * cls.gauss_newton(dataset, net))) for net in nets])
