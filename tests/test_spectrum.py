"""The Hessian's trace and spectral density (dlnpipe.spectrum) against ground truth: dense Hessians, the
closed form at minimizers, the trace bounds of dlnpipe.theory, and matrices with a known spectrum."""

import numpy as np
import pytest
import torch
from tiny import tiny_net

import dlnpipe
from dlnpipe import archs
from dlnpipe.hessian import dense_hessians
from dlnpipe.lanczos import DiagonalOperator, MatrixOperator, quadrature
from dlnpipe.spectrum import hessian_trace, spectral_density
from dlnpipe.tensors import stack_weights


def nets_of(arch, ds, n=3):
    return [tiny_net(arch, ds, seed=s) for s in range(n)]


def dense(ds, nets):
    a = nets[0].architecture
    layers, c = stack_weights(nets, dtype="float64", device="cpu")
    H = dense_hessians(a, layers, c, a.problem([ds], in_dim=layers[0].shape[2], dtype="float64", device="cpu"))
    return ((H + H.mT) / 2).numpy()


@pytest.mark.parametrize("arch", archs.NAMES)
def test_exact_trace_is_the_dense_trace(tiny_data, arch):
    nets = nets_of(arch, tiny_data)
    H = dense(tiny_data, nets)
    res = hessian_trace(tiny_data, nets, method="exact")
    np.testing.assert_allclose(res.value, np.trace(H, axis1=1, axis2=2), rtol=1e-10)
    assert (res.stderr == 0).all() and res.hvps == H.shape[1]
    assert float(hessian_trace(tiny_data, nets[1], method="exact")) == pytest.approx(res.value[1], rel=1e-12)


@pytest.mark.parametrize("arch,width", [("small", 5), ("small", 8), ("residual", 5), ("residual", 7)])
def test_closed_form_at_minimizers_is_the_dense_trace(paper_data, arch, width):
    res = dlnpipe.train(paper_data, arch=arch, depth=3, width=width, lr=0.02, scale=0.5 if arch == "small" else 1.0,
                        seed=[0, 1], steps=6000, rtol=1e-9, atol=1e-14)
    assert (res.status == dlnpipe.CONVERGED).all()
    closed = hessian_trace(paper_data, res, method="minimizer").value
    np.testing.assert_allclose(closed, np.trace(dense(paper_data, res.networks()), axis1=1, axis2=2), rtol=1e-7)


def test_trace_bounds_at_minimizers(paper_data):
    """T_min = 2L‖w*‖^{2−2/L}(tr Σ)^{1/L} a^{1−1/L} is attained by the unbalanced rank-one chain, the balanced
    minimizer's trace is the closed form, and no random factorisation goes below T_min."""
    from dlnpipe.theory import trace_minimizer

    for L in (1, 2, 4, 7):
        b = dlnpipe.bounds(paper_data, L)
        chain = trace_minimizer(paper_data, L)
        assert abs(paper_data.loss(chain.product()) - paper_data.loss_opt) < 1e-12 * paper_data.yty  # a minimizer
        assert np.trace(dense(paper_data, [chain])[0]) == pytest.approx(b.trace_min, rel=1e-10)
        assert np.trace(dense(paper_data, [b.balanced])[0]) == pytest.approx(b.trace_balanced, rel=1e-10)
        assert b.s_min <= b.trace_min * (1 + 1e-12) and b.trace_min <= b.trace_balanced * (1 + 1e-12)
    L = 4
    traces = [float(hessian_trace(paper_data, dlnpipe.random_factorization(paper_data, L, width=6, seed=s),
                                  method="minimizer")) for s in range(20)]
    assert min(traces) >= dlnpipe.bounds(paper_data, L).trace_min


def test_hutchinson_is_unbiased_and_its_error_shrinks_like_one_over_sqrt_probes(tiny_data):
    nets = nets_of("small", tiny_data, n=2)
    exact = hessian_trace(tiny_data, nets, method="exact").value
    errors = {}
    for probes in (16, 64, 256):
        runs = [hessian_trace(tiny_data, nets, method="hutchinson", probes=probes, seed=s) for s in range(30)]
        z = np.array([(r.value - exact) / r.stderr for r in runs])
        assert (np.abs(z) < 4).mean() > 0.97  # within 4 standard errors (a few may fall outside)
        errors[probes] = np.sqrt(np.mean([(r.value - exact) ** 2 for r in runs], axis=0))
    ratios = errors[16] / errors[64], errors[64] / errors[256]
    assert all(1.4 < r < 2.9 for pair in ratios for r in pair), ratios  # 1/√probes: ×2 per 4× probes


def test_slq_against_trace_and_sharpness(tiny_data):
    """Each probe's quadrature reproduces vᵀHv; its mean estimates tr H / P within its own error; with enough
    steps the largest node is the Lanczos sharpness; weights sum to 1 per probe."""
    for arch in ("small", "gelu"):
        nets = nets_of(arch, tiny_data)
        P = sum(W.size for W in nets[0].layers)
        tr = hessian_trace(tiny_data, nets, method="exact").value
        sd = spectral_density(tiny_data, nets, probes=40, steps=P, seed=3)
        np.testing.assert_allclose(sd.weights.sum(-1), 1.0, rtol=1e-12)
        per_probe = (sd.weights * sd.nodes).sum(-1)  # (B, probes): vᵀHv for each unit probe
        err = per_probe.std(1, ddof=1) / np.sqrt(40)
        assert (np.abs(per_probe.mean(1) - tr / P) <= 4 * err).all()
        top = dlnpipe.sharpness(tiny_data, nets, tol=1e-13).values
        np.testing.assert_allclose(np.nanmax(sd.nodes, axis=(1, 2)), top, rtol=1e-8)


def test_density_of_known_spectra():
    rng = np.random.default_rng(7)
    # a diagonal matrix with P steps: the nodes are its eigenvalues, the weights the probe's squares
    evals = np.linspace(-1.0, 3.0, 12)
    v = rng.standard_normal((1, 12))
    v /= np.linalg.norm(v)
    nodes, weights = quadrature(DiagonalOperator(torch.tensor(evals).expand(len(v), -1)), torch.tensor(v), 12)
    np.testing.assert_allclose(nodes[0].numpy(), evals, atol=1e-12)
    np.testing.assert_allclose(weights[0].numpy(), v[0] ** 2, atol=1e-12)
    # a GOE matrix: the smoothed quadrature density matches the smoothed eigenvalue density (semicircle)
    P = 400
    A = rng.standard_normal((P, P))
    A = torch.tensor((A + A.T) / np.sqrt(2 * P))  # spectrum on [-2, 2]
    probes = torch.tensor(rng.choice([-1.0, 1.0], size=(8, P)) / np.sqrt(P))
    nodes, weights = quadrature(MatrixOperator(A.expand(len(probes), -1, -1)), probes, 60)
    from dlnpipe.spectrum import SpectralDensity

    sd = SpectralDensity(nodes=nodes.numpy()[None], weights=weights.numpy()[None])
    grid = np.linspace(-3, 3, 601)
    est = sd.density(grid, sigma=0.15)[0]
    exact = np.linalg.eigvalsh(A.numpy())
    ref = (np.exp(-0.5 * ((grid[:, None] - exact[None]) / 0.15) ** 2) / (0.15 * np.sqrt(2 * np.pi))).mean(1)
    assert np.abs(est - ref).sum() * (grid[1] - grid[0]) < 0.1  # L1 distance of two unit-mass densities
    assert abs(sd.moment(2)[0] - np.mean(exact**2)) < 0.05


def test_batched_equals_one_at_a_time(tiny_data):
    nets = nets_of("residual", tiny_data, n=4)
    h = hessian_trace(tiny_data, nets, method="hutchinson", probes=20, seeds=[5, 6, 7, 8])
    sd = spectral_density(tiny_data, nets, probes=3, steps=10, seeds=[5, 6, 7, 8])
    for i, s in enumerate((5, 6, 7, 8)):
        one = hessian_trace(tiny_data, nets[i], method="hutchinson", probes=20, seeds=[s])
        assert one.value[0] == pytest.approx(h.value[i], rel=1e-12) and one.stderr[0] == pytest.approx(h.stderr[i])
        single = spectral_density(tiny_data, nets[i], probes=3, steps=10, seeds=[s])
        ok = sd.weights[i] > 1e-14  # nodes a restart added carry no weight
        np.testing.assert_allclose(single.nodes[0][ok], sd.nodes[i][ok], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(single.weights[0], sd.weights[i], atol=1e-12)


def test_bad_input(tiny_data):
    gelu = nets_of("gelu", tiny_data, n=1)
    with pytest.raises(ValueError, match="method 'minimizer' holds for linear networks only"):
        hessian_trace(tiny_data, gelu, method="minimizer")
    with pytest.raises(ValueError, match="method 'girard'"):
        hessian_trace(tiny_data, gelu, method="girard")
    with pytest.raises(ValueError, match="probes"):
        hessian_trace(tiny_data, gelu, method="hutchinson", probes=1)
