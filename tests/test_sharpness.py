"""Sharpness against ground truth: dense Hessians, finite differences, depth 1 (H = 2Σ), exact formula."""

import numpy as np
import pytest
import torch
from tiny import tiny_net

import dlnpipe
from dlnpipe import archs
from dlnpipe.hessian import dense_hessians
from dlnpipe.problem import Problem
from dlnpipe.tensors import stack_weights


@pytest.mark.parametrize("arch", archs.NAMES)
def test_lanczos_equals_dense_off_minimum(tiny_data, arch):
    nets = [tiny_net(arch, tiny_data, seed=s) for s in range(3)]
    for net in nets:
        dense = dlnpipe.sharpness(tiny_data, net, method="dense", k=3)
        lz = dlnpipe.sharpness(tiny_data, net, method="lanczos", k=3, tol=1e-13)
        np.testing.assert_allclose(lz.eigenvalues, dense.eigenvalues, rtol=1e-10)
        assert (lz.residuals < 1e-9 * abs(float(dense))).all()
    # batched over networks gives the same as one at a time
    batch = dlnpipe.sharpness(tiny_data, nets, method="lanczos", k=3, tol=1e-13)
    ones = np.concatenate([dlnpipe.sharpness(tiny_data, n, method="lanczos", k=3, tol=1e-13).eigenvalues
                           for n in nets])
    np.testing.assert_allclose(batch.eigenvalues, ones, rtol=1e-10)


@pytest.mark.parametrize("arch", ["small", "residual"])
def test_dense_hessian_matches_finite_differences_of_handwritten_gradient(tiny_data, arch):
    """Ground truth independent of autograd: central differences of the closed-form gradient b_kᵀh_k."""
    net = tiny_net(arch, tiny_data, seed=4)
    a = archs.get(arch)
    layers, c = stack_weights([net], dtype="float64", device="cpu")
    prob = a.problem([tiny_data], in_dim=layers[0].shape[2], dtype="float64", device="cpu")
    H = dense_hessians(a, layers, c, prob)[0].numpy()
    flat = torch.cat([W.reshape(-1) for W in layers])
    sizes = [W[0].numel() for W in layers]

    def grad(theta):
        ws, start = [], 0
        for W, s in zip(layers, sizes):
            ws.append(theta[start:start + s].reshape(W.shape))
            start += s
        return torch.cat([g.reshape(-1) for g in a.gradient(ws, c, prob)[0]]).numpy()

    eps = 1e-5
    fd = np.stack([(grad(flat + eps * e) - grad(flat - eps * e)) / (2 * eps)
                   for e in torch.eye(flat.numel(), dtype=torch.float64)], axis=1)
    np.testing.assert_allclose(H, (fd + fd.T) / 2, atol=1e-7 * np.abs(H).max())


def test_handwritten_gradient_matches_data_loss_derivative(tiny_data):
    """∂R/∂W from the moment form equals the derivative of (1/n)‖y − X w‖² computed on the data."""
    net = tiny_net("small", tiny_data, seed=2)
    layers, c = stack_weights([net], dtype="float64", device="cpu")
    prob = Problem.from_dataset(tiny_data, in_dim=3, dtype="float64", device="cpu")
    grads, _ = archs.get("small").gradient(layers, c, prob)
    X, y = torch.tensor(tiny_data.X), torch.tensor(tiny_data.y)
    params = [W.clone().requires_grad_(True) for W in layers]
    prod = params[-1][0]
    for W in reversed(params[:-1]):
        prod = prod @ W[0]
    data_loss = ((y - X @ prod[0]) ** 2).mean()
    auto = torch.autograd.grad(data_loss, params)
    for g, a in zip(grads, auto):  # entries near zero: absolute tolerance scaled by the largest entry
        np.testing.assert_allclose(g.numpy(), a.numpy(), rtol=1e-11, atol=1e-11 * np.abs(a.numpy()).max())


def test_depth_one_hessian_is_two_sigma(paper_data):
    net = dlnpipe.init_network("small", depth=1, width=5, d=5, scale=1.0, seed=0)
    layers, c = stack_weights([net], dtype="float64", device="cpu")
    prob = Problem.from_dataset(paper_data, in_dim=5, dtype="float64", device="cpu")
    H = dense_hessians(archs.get("small"), layers, c, prob)[0].numpy()
    np.testing.assert_allclose(H, 2 * paper_data.sigma, rtol=1e-13, atol=1e-13 * paper_data.lam_max)
    top = 2 * np.linalg.eigvalsh(paper_data.sigma)[::-1][:3]
    for method in ("lanczos", "dense"):
        np.testing.assert_allclose(dlnpipe.sharpness(paper_data, net, method=method, k=3).eigenvalues[0], top,
                                   rtol=1e-10)
    # depth 1: every point is "at the minimum" for the Gauss-Newton term, so exact holds everywhere
    np.testing.assert_allclose(float(dlnpipe.sharpness(paper_data, net, method="exact")), top[0], rtol=1e-12)


@pytest.mark.parametrize("arch,width", [("small", 5), ("small", 8), ("residual", 5), ("residual", 7)])
def test_exact_formula_equals_dense_at_converged_networks(paper_data, arch, width):
    scale = 0.5 if arch == "small" else 1.0
    res = dlnpipe.train(paper_data, arch=arch, depth=3, width=width, lr=0.02, scale=scale, seed=[0, 1, 2],
                        steps=6000, rtol=1e-9, atol=1e-14)
    assert (res.status == dlnpipe.CONVERGED).all(), res.loss_train - paper_data.loss_opt
    exact = dlnpipe.sharpness(paper_data, res, method="exact", k=2)
    dense = dlnpipe.sharpness(paper_data, res, method="dense", k=2)
    lz = dlnpipe.sharpness(paper_data, res, method="lanczos", k=2)
    np.testing.assert_allclose(exact.eigenvalues, dense.eigenvalues, rtol=1e-7)  # residual gradient ~1e-9
    np.testing.assert_allclose(lz.eigenvalues, dense.eigenvalues, rtol=1e-10)


def test_power_method_agrees_at_a_minimizer(paper_data):
    net = dlnpipe.bounds(paper_data, 4).balanced
    s_power = float(dlnpipe.sharpness(paper_data, net, method="power", seeds=[0]))
    s_lz = float(dlnpipe.sharpness(paper_data, net, method="lanczos", seeds=[0]))
    assert abs(s_power - s_lz) < 1e-3 * s_lz


def test_dense_refuses_large_networks(paper_data):
    net = dlnpipe.init_network("small", depth=4, width=60, d=5, scale=0.1, seed=0)
    with pytest.raises(ValueError, match=r"dense.*parameters > dense_max_params=4000"):
        dlnpipe.sharpness(paper_data, net, method="dense")


def test_exact_refuses_gelu(paper_data):
    net = dlnpipe.init_network("gelu", depth=2, width=5, d=5, scale=0.3, seed=0)
    with pytest.raises(ValueError, match="exact.*gelu"):
        dlnpipe.sharpness(paper_data, net, method="exact")


@pytest.mark.parametrize("arch", archs.names(linear=False))
def test_nonlinear_handwritten_gradient_matches_autograd(tiny_data, arch):
    """The batch-last hand-written gradient used in training (GELU, ReLU) equals autograd's on the data loss."""
    a = archs.get(arch)
    nets = [dlnpipe.init_network(arch, depth=4, width=5, d=3, scale=0.8, seed=s) for s in range(3)]
    layers, c = stack_weights(nets, dtype="float64", device="cpu")
    prob = a.problem([tiny_data], in_dim=3, dtype="float64", device="cpu")
    value, grads = a.loss_and_grad(layers, prob)
    params = [W.clone().requires_grad_(True) for W in layers]
    ref = a.loss(params, c, prob)
    auto = torch.autograd.grad(ref.sum(), params)
    np.testing.assert_allclose(value.numpy(), ref.detach().numpy(), rtol=1e-13)
    for g, a in zip(grads, auto):  # entries near zero: absolute tolerance scaled by the largest entry
        np.testing.assert_allclose(g.numpy(), a.numpy(), rtol=1e-11, atol=1e-11 * np.abs(a.numpy()).max())


@pytest.mark.parametrize("arch", archs.names(linear=False))
def test_nonlinear_dense_hessian_matches_finite_differences(tiny_data, arch):
    """Ground truth independent of autograd's second derivatives: central differences of the
    hand-written gradient. For ReLU the loss is smooth where no pre-activation of a training input
    is 0; the test checks that none is within the difference step's reach."""
    a = archs.get(arch)
    net = tiny_net(arch, tiny_data, seed=3)
    layers, c = stack_weights([net], dtype="float64", device="cpu")
    prob = a.problem([tiny_data], in_dim=3, dtype="float64", device="cpu")
    H = dense_hessians(a, layers, c, prob)[0].numpy()
    sizes = [W[0].numel() for W in layers]
    flat = torch.cat([W.reshape(-1) for W in layers])

    def unflat(theta):
        ws, start = [], 0
        for W, s in zip(layers, sizes):
            ws.append(theta[start:start + s].reshape(W.shape))
            start += s
        return ws

    ws = unflat(flat)
    h = torch.tensor(tiny_data.X)
    margin = np.inf
    for W in ws[:-1]:
        z = h @ W[0].T
        margin = min(margin, float(z.abs().min()))
        h = a.activation(z)
    eps = 1e-6
    assert margin > 1e3 * eps, margin  # every pre-activation keeps its sign under the perturbation

    def grad(theta):
        return torch.cat([g.reshape(-1) for g in a.loss_and_grad(unflat(theta), prob)[1]]).numpy()

    fd = np.stack([(grad(flat + eps * e) - grad(flat - eps * e)) / (2 * eps)
                   for e in torch.eye(flat.numel(), dtype=torch.float64)], axis=1)
    np.testing.assert_allclose(H, (fd + fd.T) / 2, atol=1e-6 * np.abs(H).max())


@pytest.mark.parametrize("arch", archs.NAMES)
def test_smallest_eigenvalue_equals_dense_off_minimum(tiny_data, arch):
    """λ_min by Lanczos on −H against the dense Hessian's smallest eigenvalue (negative: these are no minima),
    with its certificate; batched equals one at a time."""
    nets = [tiny_net(arch, tiny_data, seed=s) for s in range(3)]
    out = dlnpipe.smallest_eigenvalue(tiny_data, nets, tol=1e-13)
    for i, net in enumerate(nets):
        layers, c = stack_weights([net], dtype="float64", device="cpu")
        prob = net.architecture.problem([tiny_data], in_dim=layers[0].shape[2], dtype="float64", device="cpu")
        H = dense_hessians(net.architecture, layers, c, prob)[0].numpy()
        evals = np.linalg.eigvalsh((H + H.T) / 2)
        assert out.eigenvalues[i, 0] == pytest.approx(evals[0], abs=1e-10 * np.abs(evals).max())
        assert out.residuals[i, 0] < 1e-8 * np.abs(evals).max() and out.converged[i]
    one = dlnpipe.smallest_eigenvalue(tiny_data, nets[1], tol=1e-13).eigenvalues[0, 0]
    assert one == pytest.approx(out.eigenvalues[1, 0], abs=1e-10 * abs(one))
    assert (out.eigenvalues[:, 0] < 0).any(), "off a minimum some curvature is negative"
