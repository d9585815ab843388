"""Small-init networks with an elementwise nonlinearity σ after every layer but the last.

f(x) = W_L σ(W_{L−1} ⋯ σ(W_1 x)), layers as for the small init (docs/theory.md#architectures). These networks are not
linear: the loss needs the data at every step, the exact sharpness formula does not hold, and the
paper's bounds are reference lines only. An architecture of this family only names σ and its
derivative (:mod:`dlnpipe.archs.gelu`, :mod:`dlnpipe.archs.relu`).

The hand-written loss and gradient keep the activations in a batch-last layout (n, m, B): every
tiny per-network matrix product is one broadcast multiply and one sum over an (n, m, m, B) block
instead of B separate (n×m)(m×m) GEMMs (1.1–1.7× faster than the GEMM path on a CPU for m = 5).
"""

from __future__ import annotations

from dlnpipe.archs.base import Architecture, Evaluation
from dlnpipe.kernels import Activation
from dlnpipe.lazy import torch


class ActivatedArchitecture(Architecture):
    linear = False
    kernel_activation = Activation.NONE  # σ in the compiled step (dlnpipe/kernels/activated.c); NONE: none

    def activation(self, z):
        """σ(z), elementwise."""
        raise NotImplementedError

    def activation_backward(self, dh, z):
        """dh · σ'(z), elementwise (the chain rule through σ, as autograd computes it)."""
        raise NotImplementedError

    def step_flops(self, *, depth: int, width: int, d: int, n: int) -> float:
        """The forward pass and the backward pass (gradient and back-propagated rows) on n samples."""
        return 6.0 * n * sum(o * i for o, i in self.layer_shapes(depth=depth, width=width, d=d))

    def work_entries(self, *, depth: int, width: int, d: int, n: int) -> int:
        return 4 * depth * n * width  # the activations of the forward pass

    def outputs(self, layers, X):
        """Outputs of B networks on inputs X (n, d): shape (B, n)."""
        h = X.expand(layers[0].shape[0], *X.shape)  # (B, n, d)
        for W in layers[:-1]:
            h = self.activation(torch.matmul(h, W.mT))
        return torch.matmul(h, layers[-1].mT)[..., 0]

    def loss(self, layers, c, prob):
        return ((prob.y - self.outputs(layers, prob.X)) ** 2).mean(-1)

    def test_loss(self, layers, c, prob, w):
        return ((prob.y_test - self.outputs(layers, prob.X_test)) ** 2).mean(-1)

    def loss_and_grad(self, layers, prob, weights=None, labels=None):
        """Loss (B,) and hand-written gradients (B, out, in) of B networks, in the batch-last layout;
        with ``weights`` and ``labels`` (B, n) the weighted loss of :meth:`sample_gradient`."""
        X = prob.X
        y = prob.y[:, None] if labels is None else labels.T  # (n, 1) or (n, B)
        n, d = X.shape
        B = layers[0].shape[0]
        omega = None if weights is None else weights.T  # (n, B)

        def value_and_dout(r):
            if omega is None:
                return (r * r).mean(0), (2.0 / n) * r
            return (omega * r * r).sum(0), 2.0 * omega * r

        if len(layers) == 1:  # depth 1: f(x) = W_1 x, no activation
            value, dout = value_and_dout(X @ layers[0][:, 0, :].T - y)  # residuals (n, B)
            return value, [(dout.T @ X)[:, None, :]]
        Wt = [W.permute(1, 2, 0).contiguous() for W in layers]  # (out, in, B)
        z = (X @ Wt[0].permute(1, 0, 2).reshape(d, -1)).reshape(n, -1, B)  # first layer: one GEMM
        zs, hs = [z], [None]
        h = self.activation(z)
        for W in Wt[1:-1]:
            hs.append(h)
            z = (h[:, None, :, :] * W[None]).sum(2)  # z[n, j, b] = Σ_i W[j, i, b] h[n, i, b]
            zs.append(z)
            h = self.activation(z)
        value, dout = value_and_dout((h * Wt[-1][0][None]).sum(1) - y)  # residuals (n, B)
        grads = [None] * len(layers)
        grads[-1] = (dout[:, None, :] * h).sum(0)[None]
        dh = dout[:, None, :] * Wt[-1][0][None]
        for k in range(len(layers) - 2, -1, -1):
            dz = self.activation_backward(dh, zs[k])
            if k == 0:
                grads[0] = (X.T @ dz.reshape(n, -1)).reshape(d, -1, B).permute(1, 0, 2)
            else:
                grads[k] = (dz[:, :, None, :] * hs[k][:, None, :, :]).sum(0)  # Σ_n dz[n, j] h[n, i]
                dh = (dz[:, :, None, :] * Wt[k][None]).sum(1)  # Σ_j dz[n, j] W[j, i]
        return value, [G.permute(2, 0, 1) for G in grads]

    def evaluate(self, layers, c, prob) -> Evaluation:
        value, grads = self.loss_and_grad(layers, prob)
        return Evaluation(value=value, w=None, parts=grads)  # w only when recording

    def descend_(self, layers, ev: Evaluation, lr, alive) -> None:
        step = torch.where(alive, lr, 0.0)[:, None, None]  # a frozen network's gradient may not be finite
        for W, G in zip(layers, ev.parts):
            W.addcmul_(step, G.nan_to_num_(), value=-1.0)

    def gradient(self, layers, c, prob):
        value, grads = self.loss_and_grad(layers, prob)
        return grads, value - prob.loss_opt

    def sample_gradient(self, layers, c, prob, weights, labels):
        value, grads = self.loss_and_grad(layers, prob, weights, labels)
        return grads, value

    def fused_steps(self, layers, c, prob):
        """The compiled step (dlnpipe/kernels/activated.c): forward, hand-written backward and update of a
        SIMD register of networks at once, on the CPU, with one dataset for the batch."""
        if self.kernel_activation is Activation.NONE:
            return None, f"arch {self.name} has no compiled step"
        if layers[0].device.type != "cpu":
            return None, "the compiled kernels run on the CPU"
        if prob.batched:
            return None, "the compiled step takes one dataset for the batch"
        from dlnpipe.kernels import activated

        width = layers[0].shape[1] if len(layers) > 1 else 1
        lib, why = activated.library(self.kernel_activation, layers[0].dtype, width, prob.X.shape[1])
        if lib is None:
            return None, why

        def step(layers, c, prob, *, test=False, **kw):
            return activated.gd_steps(lib, layers, prob.X, prob.y, test=(prob.X_test, prob.y_test) if test else None,
                                      **kw)

        return step, ""
