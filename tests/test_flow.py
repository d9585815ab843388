"""Gradient flow (dlnpipe.flow, train(optimizer="flow")) against closed forms and against GD as η → 0."""

import numpy as np
import pytest
import scipy.linalg
from tolerances import assert_weights_close

import dlnpipe


@pytest.fixture(scope="module")
def data():
    return dlnpipe.make_dataset(30, 4, noise=0.5, seed=1, kappa=10.0, spectrum="linear", wstar="random")


@pytest.mark.parametrize("tol", [1e-6, 1e-10])
def test_depth_one_flow_is_the_closed_form(data, tol):
    """Depth 1: dw/dt = −2Σ(w − w*), so w(t) = w* + exp(−2Σt)(w(0) − w*): exponential decay along Σ's
    eigenvectors, each at rate 2λ_i. The integrator meets it at every sampled time to its tolerance."""
    times = np.array([0, 1, 2, 5, 10, 20])
    scales, seeds = [0.5, 1.0, 2.0], [0, 1, 2]
    res = dlnpipe.train(data, arch="small", depth=1, width=4, lr=1.0, scale=scales, seed=seeds, steps=20,
                        optimizer="flow", record_steps=times, flow_rtol=tol, flow_atol=tol * 1e-2)
    lam, V = np.linalg.eigh(data.sigma)
    for b, (s, seed) in enumerate(zip(scales, seeds)):
        w0 = dlnpipe.init_network("small", depth=1, width=4, d=4, scale=s, seed=seed).layers[0][0]
        for j, t in enumerate(times):
            wt = data.w_star + V @ (np.exp(-2 * lam * t) * (V.T @ (w0 - data.w_star)))
            # |‖w − w*‖ − ‖w_t − w*‖| ≤ ‖w − w_t‖: the sampled distance is within the weights' error
            assert abs(np.sqrt(res.traj_distance[b, j]) - np.linalg.norm(wt - data.w_star)) <= 20 * tol
        exact = data.w_star + scipy.linalg.expm(-2 * data.sigma * 20) @ (w0 - data.w_star)
        np.testing.assert_allclose(res.layers[0][b, 0], exact, rtol=0, atol=20 * tol)
    assert (res.status != dlnpipe.DIVERGED).all()


@pytest.mark.parametrize("arch", ["small", "residual"])
def test_gd_converges_to_the_flow_as_lr_shrinks(data, arch):
    """GD with step η at time T = η·steps is a first-order approximation of the flow: the gap in the
    weights shrinks about linearly in η (ratio ≈ 2 per halving) and is small at the smallest η."""
    T, kw = 3.0, dict(arch=arch, depth=4, width=5, scale=0.6, seed=3)
    flow = dlnpipe.train(data, lr=0.01, steps=int(T / 0.01), optimizer="flow", flow_rtol=1e-10, flow_atol=1e-12, **kw)
    gaps = []
    for eta in (0.01, 0.005, 0.0025, 0.00125):
        gd = dlnpipe.train(data, lr=eta, steps=int(round(T / eta)), **kw)
        gaps.append(max(np.abs(a - b).max() for a, b in zip(gd.layers, flow.layers)))
    ratios = np.array(gaps[:-1]) / np.array(gaps[1:])
    assert np.all(ratios > 1.6) and 1.8 < ratios[-1] < 2.2, (gaps, ratios)  # → 2: first order
    assert gaps[-1] < 0.02 * max(np.abs(W).max() for W in flow.layers)


def test_flow_limit_sharpness_is_within_bounds(data):
    """Small init, flow to convergence: S_min ≤ S ≤ 8LΛ‖w*‖^(2−2/L) (the theorem's object, directly)."""
    L = 4
    res = dlnpipe.train(data, arch="small", depth=L, width=4, lr=0.05, steps=4000, scale=0.25, seed=[0, 1, 2],
                        optimizer="flow")
    assert (res.status == dlnpipe.CONVERGED).all()
    b = dlnpipe.bounds(data, L)
    s = dlnpipe.sharpness(data, res).values
    assert np.all(s >= b.s_min * (1 - 1e-6)) and np.all(s <= b.s_upper)


def test_flow_batch_equals_single_and_bad_input(data):
    kw = dict(arch="small", depth=3, width=4, steps=200, optimizer="flow")
    batch = dlnpipe.train(data, lr=[0.01, 0.02], scale=[0.4, 0.5], seed=[7, 8], **kw)
    one = dlnpipe.train(data, lr=0.02, scale=0.5, seed=8, **kw)
    for a, b in zip(batch.layers, one.layers):
        # own step sizes: batch-independent up to the summation order of batches of 2 and 1
        assert_weights_close(a[1], b[0])
    with pytest.raises(ValueError, match="optimizer"):
        dlnpipe.train(data, lr=0.01, steps=10, scale=0.5, seed=0, arch="small", depth=2, width=4, optimizer="adamw")
    with pytest.raises(ValueError, match="record_sharpness"):
        dlnpipe.train(data, record_sharpness=True, **{**kw, "lr": 0.01, "scale": 0.5, "seed": 0})
