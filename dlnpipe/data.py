"""Regression data for deep linear networks (docs/theory.md#conventions, #data-with-a-prescribed-spectrum).

Two designs:

* the paper's Gaussian design (``kappa=None``): X, X_test ~ N(0, 1)^{n×d}, y = X w_true + noise·ξ,
  then y, y_test and w* rescaled so that ‖w*‖ = 1;
* a design with an **exactly prescribed spectrum** of Σ = XᵀX/n (``kappa=κ``): X = √n Q diag(√λ) Vᵀ
  with Q having orthonormal columns, so Σ = V diag(λ) Vᵀ holds to rounding. The eigenvalue
  profile is chosen by ``spectrum`` and normalised to mean 1 over the non-zero spectrum; w* is a
  unit vector whose direction relative to the eigenvectors is chosen by ``wstar``; the training
  noise is projected out of the column space of X, so w* = pinv(XᵀX)Xᵀy is exactly that vector.

Conventions (docs/theory.md#conventions): Σ = XᵀX/n, R(w) = (1/n)‖y − Xw‖² (no 1/2), w* the minimum-norm least
squares solution, a = w*ᵀΣw*/‖w*‖², Λ = λ_max(Σ), λ = smallest *non-zero* eigenvalue of Σ,
κ = Λ/λ. When n < d, Σ has rank n and κ is the condition number of its non-zero spectrum.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlnpipe._checks import check_choice, check_finite, check_int

SPECTRA = ("geometric", "linear", "two-level", "spike")
WSTAR_DIRECTIONS = ("random", "top", "bottom")

# Eigenvalues of Σ below this fraction of Λ count as zero (rank deficiency when n < d).
_RANK_RTOL = 1e-10


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Dataset:
    """A regression problem and the constants the theory needs. All arrays are float64, read-only.

    Shapes: X (n, d), y (n,), X_test (n_test, d), y_test (n_test,), w_star (d,), sigma (d, d).
    ``xty = Xᵀy/n`` and ``yty = yᵀy/n`` (with their ``_test`` twins) let a linear network's loss be
    evaluated from moments alone: R(w) = loss_opt + (w − w*)ᵀΣ(w − w*).
    """

    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    w_star: np.ndarray
    sigma: np.ndarray
    a: float
    lam_max: float
    lam_min: float
    kappa: float
    rank: int
    loss_opt: float  # R(w*) on the training set
    xty: np.ndarray
    yty: float
    sigma_test: np.ndarray
    xty_test: np.ndarray
    yty_test: float
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[1]

    @property
    def w_norm(self) -> float:
        return float(np.linalg.norm(self.w_star))

    def sigma_sqrt(self) -> np.ndarray:
        """Σ^{1/2} (symmetric, PSD), for the minimizer formulas (docs/theory.md#the-balanced-minimizer,
        #the-hessian-at-a-minimizer)."""
        evals, evecs = np.linalg.eigh(self.sigma)
        return (evecs * np.sqrt(np.clip(evals, 0, None))) @ evecs.T

    def loss(self, w: np.ndarray) -> np.ndarray:
        """Training loss R(w) = (1/n)‖y − Xw‖² for w of shape (..., d), computed from the data."""
        r = self.y - np.asarray(w) @ self.X.T
        return np.mean(r**2, axis=-1)


def dataset_from_arrays(X, y, X_test=None, y_test=None, *, rescale: bool = True, meta=None,
                        name: str = "data") -> Dataset:
    """Build a :class:`Dataset` from arrays, computing w*, Σ, a, Λ, λ, κ.

    ``rescale=True`` applies the paper's normalisation: y, y_test and w* divided by ‖w*‖, so that
    ‖w*‖ = 1. Without a test set, the training set serves as test set. ``name`` labels errors
    (e.g. the file the arrays came from).
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"{name}: X must be a 2-d array with n >= 1 rows and d >= 1 columns, "
                         f"got shape {X.shape}")
    y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if y.shape != (X.shape[0],):
        raise ValueError(f"{name}: y must have shape ({X.shape[0]},) to match X {X.shape}, got {y.shape}")
    if X_test is None and y_test is None:
        X_test, y_test = X, y
    elif X_test is None or y_test is None:
        raise ValueError(f"{name}: give both X_test and y_test, or neither")
    X_test = np.asarray(X_test, dtype=np.float64)
    y_test = np.asarray(y_test, dtype=np.float64)
    y_test = y_test.reshape(-1) if y_test.ndim == 2 and 1 in y_test.shape else y_test
    if X_test.ndim != 2 or X_test.shape[1] != X.shape[1] or X_test.shape[0] < 1:
        raise ValueError(f"{name}: X_test must have shape (n_test >= 1, {X.shape[1]}), got {X_test.shape}")
    if y_test.shape != (X_test.shape[0],):
        raise ValueError(f"{name}: y_test must have shape ({X_test.shape[0]},) to match X_test, "
                         f"got {y_test.shape}")
    for label, arr in (("X", X), ("y", y), ("X_test", X_test), ("y_test", y_test)):
        check_finite(f"{name}: {label}", arr)

    n = X.shape[0]
    w_star = np.linalg.pinv(X.T @ X) @ (X.T @ y)
    norm = float(np.linalg.norm(w_star))
    if norm == 0.0:
        raise ValueError(f"{name}: the least-squares solution w* is zero (y is orthogonal to the "
                         "columns of X); there is nothing to fit")
    if rescale:
        y, y_test, w_star = y / norm, y_test / norm, w_star / norm

    sigma = X.T @ X / n
    sigma = (sigma + sigma.T) / 2
    evals = np.linalg.eigvalsh(sigma)
    lam_max = float(evals[-1])
    if lam_max <= 0:
        raise ValueError(f"{name}: X is zero, Σ = XᵀX/n has no positive eigenvalue")
    nonzero = evals[evals > _RANK_RTOL * lam_max]
    lam_min = float(nonzero[0])
    n_test = X_test.shape[0]
    return Dataset(
        X=_frozen(X),
        y=_frozen(y),
        X_test=_frozen(X_test),
        y_test=_frozen(y_test),
        w_star=_frozen(w_star),
        sigma=_frozen(sigma),
        a=float(w_star @ sigma @ w_star / (w_star @ w_star)),
        lam_max=lam_max,
        lam_min=lam_min,
        kappa=lam_max / lam_min,
        rank=int(nonzero.size),
        loss_opt=float(np.mean((y - X @ w_star) ** 2)),
        xty=_frozen(X.T @ y / n),
        yty=float(y @ y / n),
        sigma_test=_frozen(X_test.T @ X_test / n_test),
        xty_test=_frozen(X_test.T @ y_test / n_test),
        yty_test=float(y_test @ y_test / n_test),
        meta=dict(meta or {}),
    )


def load_dataset(path: str | Path, *, rescale: bool = True) -> Dataset:
    """Read a user's ``.npz`` file with arrays ``X``, ``y`` and optionally ``X_test``, ``y_test``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # noqa: BLE001 - any reading failure is reported with the file name
        raise ValueError(f"{path}: cannot be read as an .npz file ({exc})") from None
    missing = [k for k in ("X", "y") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing array(s) {', '.join(missing)}; found {sorted(arrays)}")
    return dataset_from_arrays(arrays["X"], arrays["y"], arrays.get("X_test"), arrays.get("y_test"),
                               rescale=rescale, meta={"source": str(path)}, name=str(path))


def spectrum_profile(kind: str, r: int, kappa: float) -> np.ndarray:
    """r eigenvalues in decreasing order with max/min exactly κ and mean 1."""
    check_choice("spectrum", kind, SPECTRA)
    if r == 1:
        lam = np.ones(1)
    elif kind == "geometric":
        lam = kappa ** (-np.arange(r) / (r - 1))
    elif kind == "linear":
        lam = 1.0 - (1.0 - 1.0 / kappa) * np.arange(r) / (r - 1)
    elif kind == "two-level":
        lam = np.where(np.arange(r) < (r + 1) // 2, 1.0, 1.0 / kappa)
    else:  # spike: one eigenvalue κ times the others
        lam = np.where(np.arange(r) == 0, 1.0, 1.0 / kappa)
    return lam / lam.mean()


def make_dataset(n: int, d: int, *, noise: float = 1.0, seed: int = 0, kappa: float | None = None,
                 spectrum: str = "geometric", wstar: str = "random",
                 n_test: int | None = None) -> Dataset:
    """Generate a regression problem (see the module docstring for the two designs).

    n, d: training samples and input dimension; ``n_test`` defaults to n (the paper's choice).
    noise: standard deviation of the label noise (train and test).
    kappa: None for the paper's Gaussian design, else the exact condition number of Σ's non-zero
    spectrum, with ``spectrum`` in {geometric, linear, two-level, spike} and ``wstar`` in
    {random, top, bottom} (direction of w* relative to Σ's eigenvectors).
    """
    n = check_int("n", n, minimum=1)
    d = check_int("d", d, minimum=1)
    n_test = n if n_test is None else check_int("n_test", n_test, minimum=1)
    try:
        noise = float(noise)
    except (TypeError, ValueError):
        raise ValueError(f"noise must be a number, got {noise!r}") from None
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be finite and >= 0, got noise={noise!r}")
    check_choice("spectrum", spectrum, SPECTRA)
    check_choice("wstar", wstar, WSTAR_DIRECTIONS)
    rng = np.random.default_rng(seed)
    meta = {"n": n, "d": d, "noise": noise, "seed": seed, "kappa_target": kappa,
            "spectrum": spectrum if kappa is not None else "gaussian",
            "wstar": wstar if kappa is not None else "gaussian"}

    if kappa is None:
        X = rng.standard_normal((n, d))
        X_test = rng.standard_normal((n_test, d))
        w_true = rng.standard_normal(d)
        y = X @ w_true + noise * rng.standard_normal(n)
        y_test = X_test @ w_true + noise * rng.standard_normal(n_test)
        return dataset_from_arrays(X, y, X_test, y_test, rescale=True, meta=meta)

    try:
        kappa = float(kappa)
    except (TypeError, ValueError):
        raise ValueError(f"kappa must be a number >= 1 or None, got {kappa!r}") from None
    if not np.isfinite(kappa) or kappa < 1:
        raise ValueError(f"kappa must be a finite number >= 1, got kappa={kappa!r}")
    r = min(n, d)  # rank of Σ
    if r == 1 and kappa != 1:
        raise ValueError(f"kappa={kappa!r} needs at least two non-zero eigenvalues, but min(n, d) = 1")
    lam = spectrum_profile(spectrum, r, kappa)  # (r,), decreasing
    V = np.linalg.qr(rng.standard_normal((d, d)))[0][:, :r]  # (d, r) orthonormal eigenvectors
    Q = np.linalg.qr(rng.standard_normal((n, r)))[0]  # (n, r) orthonormal columns
    X = np.sqrt(n) * (Q * np.sqrt(lam)) @ V.T  # Σ = XᵀX/n = V diag(λ) Vᵀ
    if wstar == "top":
        u = V[:, 0]
    elif wstar == "bottom":
        u = V[:, -1]
    else:  # uniformly random unit vector in the row space of X
        c = rng.standard_normal(r)
        u = V @ (c / np.linalg.norm(c))
    xi = rng.standard_normal(n)
    xi -= Q @ (Q.T @ xi)  # noise orthogonal to the columns of X leaves w* = u exactly
    y = X @ u + noise * xi
    G = rng.standard_normal((n_test, r))
    X_test = (G * np.sqrt(lam)) @ V.T  # test inputs drawn from the population covariance Σ
    y_test = X_test @ u + noise * rng.standard_normal(n_test)
    return dataset_from_arrays(X, y, X_test, y_test, rescale=False, meta=meta)
