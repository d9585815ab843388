"""Controlled-κ data: achieved κ, spectrum shape, ‖w*‖ = 1 and the direction of w* hold exactly."""

import numpy as np
import pytest

import dlnpipe
from dlnpipe.data import SPECTRA, spectrum_profile


@pytest.mark.parametrize("spectrum", SPECTRA)
@pytest.mark.parametrize("kappa", [1.0, 2.5, 100.0, 1e4])
def test_exact_condition_number_and_profile(spectrum, kappa):
    ds = dlnpipe.make_dataset(40, 6, kappa=kappa, spectrum=spectrum, seed=3)
    evals = np.linalg.eigvalsh(ds.X.T @ ds.X / ds.n)[::-1]
    assert abs(evals[0] / evals[-1] - kappa) <= 1e-10 * kappa
    assert abs(ds.kappa - kappa) <= 1e-10 * kappa
    # the whole spectrum is the requested profile (mean 1), not just its extremes
    np.testing.assert_allclose(evals, spectrum_profile(spectrum, 6, kappa), rtol=1e-10)
    assert abs(evals.mean() - 1) < 1e-12


def test_profiles_have_the_named_shape():
    g = spectrum_profile("geometric", 5, 16.0)
    np.testing.assert_allclose(g[1:] / g[:-1], 0.5, rtol=1e-13)
    lin = spectrum_profile("linear", 5, 4.0)
    np.testing.assert_allclose(np.diff(lin), np.diff(lin)[0], rtol=1e-12)
    two = spectrum_profile("two-level", 5, 10.0)
    assert len(np.unique(two.round(12))) == 2 and np.sum(two == two.max()) == 3


@pytest.mark.parametrize("direction", ["top", "bottom", "random"])
@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_wstar_direction_and_norm(direction, noise):
    ds = dlnpipe.make_dataset(50, 5, kappa=10.0, spectrum="linear", wstar=direction, noise=noise, seed=7)
    # w* recomputed from the data, independently of the generator's bookkeeping
    w = np.linalg.lstsq(ds.X, ds.y, rcond=None)[0]
    np.testing.assert_allclose(w, ds.w_star, atol=1e-12)
    assert abs(np.linalg.norm(w) - 1) < 1e-12
    evals, evecs = np.linalg.eigh(ds.sigma)
    if direction == "top":
        assert abs(abs(evecs[:, -1] @ w) - 1) < 1e-10
        assert abs(ds.a - ds.lam_max) < 1e-10
    elif direction == "bottom":
        assert abs(abs(evecs[:, 0] @ w) - 1) < 1e-10
        assert abs(ds.a - ds.lam_min) < 1e-10
    else:
        assert ds.lam_min < ds.a < ds.lam_max
    if noise > 0:
        assert ds.loss_opt > 0.5  # the noise is kept (orthogonal to the columns of X)


def test_underdetermined_kappa_is_on_the_nonzero_spectrum():
    ds = dlnpipe.make_dataset(15, 20, kappa=8.0, spectrum="geometric", seed=2)
    evals = np.linalg.eigvalsh(ds.sigma)
    assert ds.rank == 15 and np.sum(evals > 1e-10) == 15
    assert abs(ds.kappa - 8.0) <= 1e-10 * 8
    assert abs(ds.w_norm - 1) < 1e-12
    assert ds.loss_opt < 1e-20 * ds.yty  # n < d: interpolation (R* at the rounding floor of yᵀy/n)


def test_paper_design_normalisation(paper_data):
    ds = paper_data
    assert abs(ds.w_norm - 1) < 1e-12
    assert ds.X.shape == (50, 5) and ds.X_test.shape == (50, 5)
    np.testing.assert_allclose(ds.sigma, ds.X.T @ ds.X / 50, rtol=1e-14)
    assert ds.lam_min <= ds.a <= ds.lam_max
    assert 1.5 < ds.kappa < 6  # a Gaussian 50×5 design: κ of a few units
    # loss from moments equals the loss from the data
    w = np.random.default_rng(0).standard_normal(5)
    moment = ds.loss_opt + (w - ds.w_star) @ ds.sigma @ (w - ds.w_star)
    assert abs(moment - ds.loss(w)) < 1e-12 * ds.yty  # two summation orders of the same loss


def test_user_arrays_and_file(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 4))
    y = X @ np.array([1.0, -2, 0.5, 0]) + 0.1 * rng.standard_normal(30)
    np.savez(tmp_path / "mine.npz", X=X, y=y)
    ds = dlnpipe.load_dataset(tmp_path / "mine.npz")
    assert abs(ds.w_norm - 1) < 1e-12 and ds.X_test.shape == (30, 4)
    np.savez(tmp_path / "bad.npz", X=X, y=y[:-1])
    with pytest.raises(ValueError, match=r"bad\.npz.*y must have shape \(30,\)"):
        dlnpipe.load_dataset(tmp_path / "bad.npz")
    np.savez(tmp_path / "nox.npz", y=y)
    with pytest.raises(ValueError, match=r"missing array\(s\) X"):
        dlnpipe.load_dataset(tmp_path / "nox.npz")
