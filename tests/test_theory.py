"""The balanced rank-one minimizer, S_min, and random factorisations
(docs/theory.md#the-sharpness-and-its-lower-bound, #the-balanced-minimizer)."""

import numpy as np
import pytest

import dlnpipe


@pytest.mark.parametrize("depth", [1, 2, 5, 10])
@pytest.mark.parametrize("kappa", [None, 20.0])
def test_balanced_minimizer(depth, kappa):
    ds = dlnpipe.make_dataset(50, 5, kappa=kappa, seed=11)
    b = dlnpipe.bounds(ds, depth)
    net = b.balanced
    # a global minimizer, checked on the data; R − R* sits at the rounding floor of yᵀy/n
    assert abs(ds.loss(net.product()) - ds.loss_opt) < 1e-12 * ds.yty
    dense = float(dlnpipe.sharpness(ds, net, method="dense"))
    assert abs(dense - b.s_balanced) < 1e-10 * b.s_balanced
    power = ds.w_norm ** (2 - 2 / depth)
    assert b.s_min <= b.s_balanced + 1e-12
    assert b.s_balanced <= 2 * ((depth - 1) * ds.a + ds.lam_max) * power + 1e-12
    assert abs(b.eta_c - 2 / b.s_min) < 1e-15 and abs(b.s_min - 2 * depth * ds.a * power) < 1e-12
    assert abs(b["s_upper"] - 8 * depth * ds.lam_max * power) < 1e-12


def test_random_factorisations_are_sharper_than_s_min(paper_data):
    depth = 4
    b = dlnpipe.bounds(paper_data, depth)
    values = []
    for seed in range(20):
        net = dlnpipe.random_factorization(paper_data, depth, width=6, seed=seed)
        assert abs(paper_data.loss(net.product()) - paper_data.loss_opt) < 1e-10 * paper_data.yty
        s = float(dlnpipe.sharpness(paper_data, net, method="dense"))
        assert abs(s - float(dlnpipe.sharpness(paper_data, net, method="exact"))) < 1e-8 * s
        values.append(s)
    assert min(values) >= b.s_min
    assert np.median(values) > b.s_balanced  # random factorisations are typically much sharper


def test_residual_balanced_minimizer(paper_data):
    net = dlnpipe.balanced_minimizer(paper_data, 3, arch="residual", width=7)
    assert abs(paper_data.loss(net.product()[:5]) - paper_data.loss_opt) < 1e-12 * paper_data.yty
    assert abs(float(dlnpipe.sharpness(paper_data, net, method="dense"))
               - dlnpipe.bounds(paper_data, 3).s_balanced) < 1e-10 * 30


def test_structure_of_balanced_minimizer(paper_data):
    net = dlnpipe.bounds(paper_data, 5).balanced
    st = dlnpipe.structure(net, w_star=paper_data.w_star)
    assert np.nanmax(st.sv_ratio) < 1e-12  # rank one
    np.testing.assert_allclose(st.alignment, 1.0, atol=1e-12)  # consecutive singular vectors aligned
    assert abs(st.input_alignment[0] - 1) < 1e-12
    random = dlnpipe.init_network("small", depth=5, width=5, d=5, scale=1.0, seed=0)
    st_r = dlnpipe.structure(random)
    assert np.nanmin(st_r.sv_ratio[:, :-1]) > 0.05 and st_r.alignment.mean() < 0.9


@pytest.mark.parametrize("depth", [2, 3])
def test_sharpness_bound_at_underdetermined_minimizers(depth):
    """n < d: a minimizer's product is w* + a null direction of Σ; its sharpness is at least
    2L(w*ᵀΣw*)‖w_prod‖^{−2/L} = S_min (1 + ‖w_prod − w*‖²/‖w*‖²)^{−1/L} (claim c1's bound), checked against
    dense Hessians of random factorisations of such products."""
    import pandas as pd

    from dlnpipe.analysis import minimizer_bound
    from dlnpipe.networks import Weights

    ds = dlnpipe.make_dataset(4, 6, noise=0.5, seed=3, kappa=5.0)
    null = np.linalg.svd(ds.X)[2][4:]  # (2, d): Σ's null space
    rng = np.random.default_rng(depth)
    s_min = dlnpipe.bounds(ds, depth).s_min
    for _ in range(40):
        w = ds.w_star + rng.uniform(0, 3) * (null.T @ rng.standard_normal(2))
        layers = [rng.standard_normal((6, 6)) * rng.uniform(0.3, 2) for _ in range(depth - 1)]
        A = np.linalg.multi_dot([*reversed(layers), np.eye(6)])
        net = Weights([*layers, (w @ np.linalg.pinv(A))[None, :]], arch="small")
        assert abs(ds.loss(net.product()) - ds.loss_opt) < 1e-10 * ds.yty  # a global minimizer
        dist = float(np.sum((net.product() - ds.w_star) ** 2))
        bound = minimizer_bound(pd.DataFrame({"s_min": [s_min], "w_norm": [ds.w_norm], "distance": [dist],
                                              "depth": [depth]}))[0]
        assert bound <= s_min and float(dlnpipe.sharpness(ds, net, method="dense")) >= bound * (1 - 1e-9)
