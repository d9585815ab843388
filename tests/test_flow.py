"""Gradient flow (dlnpipe.flow, train(optimizer="flow")) against closed forms and against GD as η → 0."""

import numpy as np
import pytest
import scipy.linalg
from tolerances import assert_floor_close, assert_weights_close, distance_scale, loss_scale

import dlnpipe
from dlnpipe import kernels
from dlnpipe.status import TrainPath


@pytest.fixture(scope="module")
def data():
    return dlnpipe.make_dataset(30, 4, noise=0.5, seed=1, kappa=10.0, spectrum="linear", wstar="random")


@pytest.fixture(params=["compiled", "torch"])
def path(request, monkeypatch):
    """Each flow test on both paths: the compiled flow (linear nets on the CPU) and the torch one."""
    if request.param == "torch":
        monkeypatch.setenv("DLNPIPE_KERNELS", "0")
    kernels._load.cache_clear()
    yield TrainPath.COMPILED if request.param == "compiled" else TrainPath.TORCH
    kernels._load.cache_clear()


@pytest.mark.parametrize("tol", [1e-6, 1e-10])
def test_depth_one_flow_is_the_closed_form(data, tol, path):
    """Depth 1: dw/dt = −2Σ(w − w*), so w(t) = w* + exp(−2Σt)(w(0) − w*): exponential decay along Σ's
    eigenvectors, each at rate 2λ_i. The integrator meets it at every sampled time to its tolerance."""
    times = np.array([0, 1, 2, 5, 10, 20])
    scales, seeds = [0.5, 1.0, 2.0], [0, 1, 2]
    res = dlnpipe.train(data, arch="small", depth=1, width=4, lr=1.0, scale=scales, seed=seeds, steps=20,
                        optimizer="flow", record_steps=times, flow_rtol=tol, flow_atol=tol * 1e-2)
    assert (res.train_path == path).all()
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


def _both_paths(monkeypatch, data, **kw):
    out = []
    for kernel in ("1", "0"):
        monkeypatch.setenv("DLNPIPE_KERNELS", kernel)
        kernels._load.cache_clear()
        out.append(dlnpipe.train(data, **kw))
    kernels._load.cache_clear()
    return out


@pytest.mark.parametrize("arch,depth,width,batched", [("small", 4, 5, False), ("residual", 3, 4, True),
                                                      ("small", 6, 3, True)])
def test_compiled_flow_equals_the_torch_flow(monkeypatch, arch, depth, width, batched):
    """The compiled flow (linear.c) is the torch solver step for step: the same field evaluations per
    network (so the same accepted and rejected steps), weights to 1e-10 relative in float64, the same samples
    (losses to 1e-10 of their scale, distances of the size of ‖w*‖², at the record times, where both land)
    and statuses, whichever way a network
    stops: converged to the solver's stop, at its horizon (T = 0.5), or out of steps (flow_max_steps = 20).
    11 networks: the slots of a chunk take several networks in turn. The scales keep the flows off the saddle
    at 0 and its plateaus, where a rounding difference grows exponentially, and the flows non-stiff: where the
    step size is held at the explicit solver's stability limit, whether a step is accepted is decided by rounding."""
    sets = [dlnpipe.make_dataset(30, 4, noise=0.5, seed=s, kappa=k, spectrum="linear", wstar="random")
            for s, k in ((1, 10.0), (2, 1.0), (3, 100.0))]
    B = 11
    data = [sets[i % 3] for i in range(B)] if batched else sets[0]
    used = sets if batched else sets[:1]
    kw = dict(arch=arch, depth=depth, width=width, lr=np.where(np.arange(B) % 4 == 0, 0.001, 0.05),
              steps=500 + 100 * np.arange(B), scale=np.linspace(0.3, 0.65, B), seed=np.arange(B),
              optimizer="flow", record_every=50, log_every_s=None)
    for max_steps in (100_000, 20):
        a, b = _both_paths(monkeypatch, data, **kw, flow_max_steps=max_steps)
        assert (a.train_path == TrainPath.COMPILED).all() and (b.train_path == TrainPath.TORCH).all()
        np.testing.assert_array_equal(a.extras["evaluations"], b.extras["evaluations"])
        np.testing.assert_array_equal(a.status, b.status)
        if max_steps == 20:
            long = kw["lr"] == 0.05  # the others reach T = 0.5 first
            assert (a.status == dlnpipe.FAILED).all() and (a.extras["evaluations"][long] >= 1 + 6 * 20).all()
        else:
            assert set(a.status) == {dlnpipe.CONVERGED, dlnpipe.FAILED}  # converged, or stopped at T = 0.5
        # where a network stops on its own (converged, at T) both paths are at the same time; out of steps, at
        # times that differ as the step sizes do: h ∝ err^(−1/5), and err (the gap of the 5th- and 4th-order
        # solutions) carries the rounding of the stages amplified by their cancellation, ~1e-8 relative
        for A, W in zip(a.layers, b.layers):
            for i in range(B):
                assert_weights_close(A[i], W[i], rel=1e-7 if max_steps == 20 else 1e-10)
        for key in ("traj_loss_train", "traj_loss_test"):
            np.testing.assert_array_equal(np.isnan(getattr(a, key)), np.isnan(getattr(b, key)))
            assert_floor_close(getattr(a, key), getattr(b, key), scale=loss_scale(*used))
        assert_floor_close(a.traj_distance, b.traj_distance, scale=distance_scale(*used))
