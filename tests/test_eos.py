"""The edge-of-stability measurements (dlnpipe.eos) on trajectories and networks whose answers are known."""

import numpy as np
import pytest

import dlnpipe
from dlnpipe.eos import FailureKind, balance_sampler, balancing_gaps, classify, edge_of_stability, failure_kinds


def test_edge_of_stability_of_a_built_trajectory():
    """η = 0.1. S grows by 0.01 per step from 10 (sampled every 10 steps) to 20 at step 1000, then alternates
    19.9, 20.2: onset at 980 (the first S ≥ 0.99·2/η = 19.8), sharpening 0.01; after it 19.9 (990), 20.0 (1000)
    and 100 alternating samples, 50 of them above 2/η. A second network that never gets there has no onset and
    its slope over all samples; NaN samples are skipped."""
    steps = np.arange(0, 2001, 10)
    first = np.where(steps < 1000, 10 + 0.01 * steps, np.where((steps // 10) % 2 == 0, 20.2, 19.9))
    first[steps == 1000] = 20.0
    second = 5 + 0.002 * steps
    second[-5:] = np.nan
    out = edge_of_stability(np.stack([first, second]), steps, [0.1, 0.1])
    assert out.onset.tolist() == [980, -1]
    np.testing.assert_allclose(out.sharpening, [0.01, 0.002], rtol=1e-9)
    assert out.above[0] == pytest.approx(50 / 102) and np.isnan(out.above[1])
    mean = 0.1 * (19.9 + 20.0 + 50 * 20.2 + 50 * 19.9) / 102
    assert out.mean_after[0] == pytest.approx(mean) and np.isnan(out.mean_after[1])
    with pytest.raises(ValueError, match="samples per network"):
        edge_of_stability(first[None, :-1], steps, 0.1)


@pytest.fixture(scope="module")
def data():
    return dlnpipe.make_dataset(30, 4, noise=0.5, seed=1, kappa=10.0)


def test_gradient_flow_keeps_the_balancing_gaps_and_gd_moves_them(data):
    """Gradient flow conserves every W_{k+1}ᵀW_{k+1} − W_kW_kᵀ, so the gaps at its limit are those at the start
    (the solver's drift far below them); GD at a large η moves them by much more."""
    kw = dict(arch="small", depth=4, width=6, scale=[0.5, 1.0], seed=[0, 1], dtype="float64")
    start = [dlnpipe.init_network("small", depth=4, width=6, d=4, scale=s, seed=k) for s, k in ((0.5, 0), (1.0, 1))]
    G0 = balancing_gaps(start)
    assert G0.shape == (2, 3) and (G0 > 0.1).all()
    flow = dlnpipe.train(data, lr=1.0, steps=10_000, optimizer="flow", flow_rtol=1e-10, flow_atol=1e-12, **kw)
    assert (flow.status == dlnpipe.CONVERGED).all()
    flow_drift = np.abs(balancing_gaps(flow.networks()) - G0).max()
    assert flow_drift < 1e-7 * G0.max()
    gd = dlnpipe.train(data, lr=0.1, steps=300, **kw)
    assert np.abs(balancing_gaps(gd.networks()) - G0).max() > 1e3 * flow_drift
    # the torch form on layer tensors is the same
    np.testing.assert_allclose(balancing_gaps([np.stack([n.layers[k] for n in start]) for k in range(4)]), G0)


def test_the_gaps_along_gd_and_along_the_central_flow(data):
    """traj_balance along GD is the gaps of the weights GD reaches in that many steps (1e-12), from G(0) at step
    0; along the central flow below the edge (gradient flow) it stays at G(0) (1e-7), while GD's moves."""
    kw = dict(arch="small", depth=3, width=5, scale=[0.4, 0.5], seed=[0, 1], dtype="float64", lr=0.1)
    gd = dlnpipe.train(data, steps=60, record_steps=[0, 20, 60], record_sharpness=True,
                       samplers={"traj_balance": balance_sampler}, **kw)
    G = gd.extras["traj_balance"]
    assert G.shape == (2, 3, 2)
    start = [dlnpipe.init_network("small", depth=3, width=5, d=4, scale=s, seed=k) for s, k in ((0.4, 0), (0.5, 1))]
    np.testing.assert_allclose(G[:, 0], balancing_gaps(start), rtol=1e-12)
    at20 = dlnpipe.train(data, steps=20, **kw)
    np.testing.assert_allclose(G[:, 1], balancing_gaps(at20.networks()), rtol=1e-12)
    np.testing.assert_allclose(G[:, 2], balancing_gaps(gd.networks()), rtol=1e-12)
    assert np.abs(G[:, 2] - G[:, 0]).max() > 1e-3 * G[:, 0].max()
    central = dlnpipe.train(data, optimizer="central", steps=60, record_every=20, **{**kw, "lr": 0.01})
    Gc = central.extras["traj_balance"]
    assert Gc.shape == (2, 4, 2) and np.isfinite(Gc).all()
    np.testing.assert_allclose(Gc, np.broadcast_to(Gc[:, :1], Gc.shape), rtol=1e-7)
    np.testing.assert_allclose(Gc[:, 0], balancing_gaps(start), rtol=1e-12)


def test_failure_kinds_of_networks_that_are_known():
    status = np.array([0, 2, 1, 1, 1, 1])
    kinds = failure_kinds(status, threshold=20.0, sharpness=[10, 10, 30, 10, 10, 10],
                          lambda_min=[0, 0, -1, -1, -1e-9, -1], grad_sq=[0, 0, 1, 1e-6, 1e-6, 1],
                          excess=[0, 0, 1, 1, 1, 1])
    assert kinds.tolist() == [FailureKind.CONVERGED, FailureKind.DIVERGED, FailureKind.UNSTABLE,
                              FailureKind.SADDLE, FailureKind.SLOW, FailureKind.SLOW]


def test_a_tiny_init_is_stuck_at_the_saddle_and_a_large_lr_is_unstable(data):
    """Depth 2 from scale 1e-8: after 20 steps the network still sits at the origin, a saddle (the Hessian there
    has eigenvalues ±2‖Xᵀy/n‖, the gradient is O(scale)); at η above 2/S_min no minimizer is stable and this
    one diverges (depth-2 square loss: the oscillation grows); at a small η from a normal init it converges."""
    stuck = dlnpipe.train(data, arch="small", depth=2, width=4, lr=0.05, scale=1e-8, seed=0, steps=20)
    assert classify(data, stuck).tolist() == [FailureKind.SADDLE]
    s_min = dlnpipe.bounds(data, depth=2).s_min
    loud = dlnpipe.train(data, arch="small", depth=2, width=4, lr=2.2 / s_min, scale=0.8, seed=0, steps=400,
                         exit_fixed=False)
    assert classify(data, loud).tolist() == [FailureKind.DIVERGED]
    done = dlnpipe.train(data, arch="small", depth=2, width=4, lr=0.05, scale=0.8, seed=0, steps=5000)
    assert classify(data, done).tolist() == [FailureKind.CONVERGED]


def test_the_measure_stage_of_networks_with_fewer_parameters_than_eigenvalues_asked():
    """A depth-2 scalar network has two parameters: asked for the top three eigenvalues, the measurements hold its
    two (those of its dense Hessian, 1e-10 of S: the second is 0 at a minimizer) and NaN for the third; how it
    ended is measured as for any network."""
    from dlnpipe.measurements import Options, ended, measure
    from dlnpipe.steppers.gd import GradientDescent

    ds = dlnpipe.make_dataset(20, 1, noise=0.5, seed=0)
    res = dlnpipe.train(ds, arch="small", depth=2, width=1, lr=0.1, scale=[0.5, 1.0], seed=[0, 1], steps=300,
                        dtype="float64")
    nets = res.networks()
    init = [dlnpipe.init_network("small", depth=2, width=1, d=1, scale=s, seed=k) for s, k in ((0.5, 0), (1.0, 1))]
    out = measure(nets, init, [ds, ds], res.status, np.array([0, 1]), Options(k=3, device="cpu"))
    dense = dlnpipe.sharpness(ds, nets, method="dense", k=2).eigenvalues
    np.testing.assert_allclose(out["sharpness_topk"][:, :2], dense, rtol=1e-10, atol=1e-10 * dense.max())
    assert np.isnan(out["sharpness_topk"][:, 2]).all() and np.isnan(out["sharpness_residual"][:, 2]).all()
    train = {"status": res.status, "lr": np.full(2, 0.1), "loss_train": res.loss_train}
    assert ended(out, train, [ds, ds], GradientDescent, {}).tolist() == [FailureKind.CONVERGED] * 2
