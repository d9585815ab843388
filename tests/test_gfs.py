"""The gradient-flow solution and its sharpness (dlnpipe.gfs) against closed forms and its own invariances."""

import numpy as np
import pytest
import scipy.optimize

import dlnpipe
from dlnpipe.gfs import flow_solution, gfs_sharpness, phi_sampler


@pytest.fixture(scope="module")
def scalar_data():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 1))
    y = 1.3 * X[:, 0] + 0.2 * rng.standard_normal(40)
    return dlnpipe.dataset_from_arrays(X, y, rescale=False)


def scalar_phi(ds, w) -> float:
    """Scalar networks f(x) = (w_1⋯w_L)x: the flow conserves w_i² − w_j², so its limit has w_i² + δ with
    ∏(w_i² + δ) = w*², and φ = 2σ² w*² Σ_i 1/(w_i² + δ) (σ² = Σ, the 1×1 covariance)."""
    w2, ws = np.asarray(w) ** 2, float(ds.w_star[0])
    delta = scipy.optimize.brentq(lambda t: np.sum(np.log(w2 + t)) - np.log(ws**2), -w2.min() * (1 - 1e-12), 1e3)
    return 2 * float(ds.sigma[0, 0]) * ws**2 * float(np.sum(1 / (w2 + delta)))


def scalar_net(values, seed=0):
    return dlnpipe.Weights([np.array([[v]]) for v in values], arch="small", seed=seed)


@pytest.mark.parametrize("values", [[0.3, 0.5], [0.2, 0.4, 0.6, 0.8], [0.9, 1.1, 0.5, 0.7, 1.0, 0.6, 0.8, 1.2],
                                    [1.5, 0.1, 0.2, 0.3]])
def test_scalar_networks_have_the_closed_form_phi(scalar_data, values):
    """φ of a scalar network equals the closed form (products of the sign of w*; depths 2, 4, 8; balanced
    and very unbalanced starts)."""
    phi = gfs_sharpness(scalar_data, [scalar_net(values)])
    np.testing.assert_allclose(phi, [scalar_phi(scalar_data, values)], rtol=1e-6)


def test_limits_are_minimizers_and_keep_the_balance(scalar_data):
    """The limits are global minimizers (to the flow's stop), and every w_i² − w_j² is what it was."""
    nets = [scalar_net([0.2, 0.4, 0.6, 0.8]), scalar_net([1.5, 0.1, 0.2, 0.3], seed=1)]
    sol = flow_solution(scalar_data, nets)
    assert sol.converged.all() and (sol.excess <= 1e-12 * scalar_data.yty).all()
    for net, lim in zip(nets, sol.limits):
        w0, w1 = np.array([W[0, 0] for W in net]) ** 2, np.array([W[0, 0] for W in lim]) ** 2
        np.testing.assert_allclose(w1 - w1[0], w0 - w0[0], atol=1e-8)
        assert np.prod([W[0, 0] for W in lim]) == pytest.approx(scalar_data.w_star[0], rel=1e-7)


@pytest.fixture(scope="module")
def data():
    return dlnpipe.make_dataset(30, 4, noise=0.5, seed=1, kappa=10.0)


def test_phi_is_constant_along_the_flow_and_is_a_minimizers_sharpness(data):
    """φ at the start, at two points of the flow from it and at its limit agree; at the limit it is the
    limit's own sharpness (Lanczos at the limit, independently of the d×d formula)."""
    kw = dict(arch="small", depth=4, width=6, scale=[0.4, 0.8], seed=[0, 1])
    start = [dlnpipe.init_network("small", depth=4, width=6, d=4, scale=s, seed=k) for s, k in zip([0.4, 0.8], [0, 1])]
    phi0 = gfs_sharpness(data, start)
    for T in (2, 10):  # flow times 0.1 and 0.5
        mid = dlnpipe.train(data, lr=0.05, steps=T, optimizer="flow", flow_rtol=1e-11, flow_atol=1e-13, **kw)
        assert (mid.status != dlnpipe.CONVERGED).all(), "the midpoints are not yet minimizers"
        np.testing.assert_allclose(gfs_sharpness(data, mid), phi0, rtol=1e-6)
    sol = flow_solution(data, start)
    lanczos = dlnpipe.sharpness(data, sol.limits, method="lanczos", seeds=[0, 1]).values
    np.testing.assert_allclose(phi0, lanczos, rtol=1e-6)
    assert np.all(phi0 >= dlnpipe.bounds(data, depth=4).s_min * (1 - 1e-9))


def test_train_from_given_weights_equals_train_from_their_draw(data):
    """train(init=...) starting at init_network's draw is the run from (scale, seed)."""
    kw = dict(arch="small", depth=3, width=5, lr=0.05, steps=50, dtype="float64")
    drawn = dlnpipe.train(data, scale=0.7, seed=[4, 5], **kw)
    start = [dlnpipe.init_network("small", depth=3, width=5, d=4, scale=0.7, seed=s) for s in (4, 5)]
    given = dlnpipe.train(data, scale=0.7, seed=[4, 5], init=start, **kw)
    for a, b in zip(drawn.layers, given.layers):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="init\\[0\\] has layers"):
        dlnpipe.train(data, scale=0.7, seed=0, init=start[:1], **{**kw, "depth": 4})


def test_non_finite_weights_and_unconverged_flows_give_nan(data):
    good = dlnpipe.init_network("small", depth=3, width=5, d=4, scale=0.7, seed=0)
    bad = dlnpipe.Weights([W * np.nan for W in good], arch="small", seed=1)
    phi = gfs_sharpness(data, [good, bad])
    assert np.isfinite(phi[0]) and np.isnan(phi[1])
    phi = gfs_sharpness(data, [good], max_steps=3)
    assert np.isnan(phi[0])


def test_phi_along_gd_of_a_scalar_network_decreases_to_its_sharpness(scalar_data):
    """φ_t along GD (phi_sampler) of a scalar network (depth 4, η at half of 2/φ_0): φ_0 is the closed form of the
    init, φ_t never increases (Kreisler et al.'s theorem for scalar networks), and at the converged end it is the
    final sharpness."""
    start = [0.3, 0.5, 0.7, 0.9]
    phi0 = scalar_phi(scalar_data, start)
    net = scalar_net(start, seed=5)
    res = dlnpipe.train(scalar_data, arch="small", depth=4, width=1, lr=1.0 / phi0, scale=0.0, seed=5, steps=3000,
                        init=[net], record_steps=np.arange(0, 3001, 100), record_sharpness=True,
                        samplers={"traj_gfs_sharpness": phi_sampler(scalar_data)})
    phi = res.extras["traj_gfs_sharpness"][0]
    assert res.status[0] == dlnpipe.CONVERGED and np.isfinite(phi).all()
    assert phi[0] == pytest.approx(phi0, rel=1e-6)
    assert np.diff(phi).max() <= 1e-7 * phi0, np.diff(phi).max()
    assert phi[0] - phi[-1] > 1e-4 * phi0, "GD at this η moves φ measurably"
    assert phi[-1] == pytest.approx(res.traj_sharpness[0, -1], rel=1e-6)
    with pytest.raises(ValueError, match="need record_sharpness"):
        dlnpipe.train(scalar_data, arch="small", depth=4, width=1, lr=0.1, scale=0.5, seed=0, steps=3,
                      samplers={"phi": phi_sampler(scalar_data)})
