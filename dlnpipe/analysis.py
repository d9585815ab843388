"""Each network against the theory: the analysis behind the bound tables and figures
(docs/theory.md#the-claims-the-tables-check).

Per experiment, one row per (init, depth, width, kappa, spectrum, wstar, lr): counts of converged / failed /
diverged networks, the bounds (S_min, 8LΛ‖w*‖^{2−2/L}, η_c, 2/η), the final sharpness's median and extremes,
and for each claim how many networks it was checked on and how many violate it. A second table sums the claims
over the experiment (``holds`` / ``fails``). A third, the empirical constant, gives per (init, kappa,
spectrum, wstar) the largest S/S_min over depth, width, scale and seeds of converged networks, next to 4Λ/a
(the small-init bound, docs/theory.md#gradient-flow-from-small-initialisation): C(κ) of the claim "S ≤
C(κ)·S_min, independent of depth and width".

Claims (numbered as in docs/theory.md#the-claims-the-tables-check); 1, 2, 3b and 4 are linear theory and are
checked on linear architectures only (``Architecture.linear``; for GELU or ReLU nets the bounds are reference lines):
1. converged ⇒ S ≥ S_min (relative tolerance ``tol``);
2. small init (``Architecture.small_init``), η ≤ η_c/4 (or gradient flow), converged ⇒ S ≤ 8LΛ‖w*‖^{2−2/L};
3a. gd and sgd: converged ⇒ S ≤ 2/η·(1 + ``eos_overshoot``); 3b. gd and sgd: η > η_c ⇒ not converged
    (gradient flow has no step size; the other optimizers have their own thresholds, 8 and 9);
4. converged ⇒ Lanczos sharpness = exact formula (relative tolerance ``exact_rtol``; linear nets);
7. converged ⇒ tr H ≥ T_min = 2L‖w*‖^{2−2/L}(tr Σ)^{1/L} a^{1−1/L} (the trace at the minimizer by its closed
   form; linear nets; derived in :mod:`dlnpipe.theory`);
6. underdetermined (n < d): log(test − train loss) against log S has a positive slope (η = the
   smallest learning rate; one-sided p-value of the regression);
8. heavy ball: converged ⇒ S ≤ (2 + 2β)/η·(1 + ``eos_overshoot``);
9. Adam: converged ⇒ λ_max(P⁻¹H) ≤ (2 + 2β1)/((1 − β1)η)·(1 + ``eos_overshoot``) (the final preconditioner);
10. underdetermined, gd and sgd without label noise: log S against log(batch size) has a positive slope
   (smaller batches find flatter minima; one-sided p-value).
Claim 1 holds for every optimizer: it is a property of the minimizers, whatever found them. The
thresholds come from the optimizers (:meth:`dlnpipe.steppers.base.Stepper.threshold`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from dlnpipe import archs, steppers
from dlnpipe.cube import DATA_DIMS
from dlnpipe.eos import edge_of_stability
from dlnpipe.status import NO_NETWORK, FailureKind, Status

LINEAR = archs.names(linear=True)  # the architectures the paper's bounds are about
SMALL_INIT_LINEAR = archs.names(linear=True, small_init=True)  # ... and its small-init theorem

TOL = 1e-6
EOS_OVERSHOOT = 0.1
EXACT_RTOL = 1e-3


@dataclass(frozen=True)
class Regression:
    slope: float
    intercept: float
    r2: float
    p_value: float  # one-sided, H1: slope > 0
    n: int


def gap_regression(ds: xr.Dataset, lr: float | None = None) -> Regression | None:
    """log(gen. gap) against log(sharpness) over converged networks at ``lr`` (default: smallest η)."""
    lr = float(ds.lr.min()) if lr is None else lr
    sel = ds.sel(lr=lr)
    ok = (sel.status == Status.CONVERGED) & (sel.loss_test > sel.loss_train) & (sel.sharpness > 0)
    gap = (sel.loss_test - sel.loss_train).where(ok).values.ravel()
    s = sel.sharpness.where(ok).values.ravel()
    keep = np.isfinite(gap) & np.isfinite(s)
    if keep.sum() < 3:
        return None
    from scipy import stats  # here: a table or figure job without this regression does not pay its import

    fit = stats.linregress(np.log(s[keep]), np.log(gap[keep]), alternative="greater")
    return Regression(slope=float(fit.slope), intercept=float(fit.intercept), r2=float(fit.rvalue**2),
                      p_value=float(fit.pvalue), n=int(keep.sum()))


def batch_regression(ds: xr.Dataset) -> Regression | None:
    """log(sharpness) against log(batch size) over converged networks of gd and sgd without label noise,
    all learning rates and scales together (None: fewer than two batch sizes or three networks)."""
    if "batch_size" not in ds.coords:
        return None
    df = frame(ds)
    ok = (df.optimizer.isin(GD_LIKE) & (df.label_noise.fillna(0) == 0) & (df.status == Status.CONVERGED)
          & (df.sharpness > 0) & (df.batch_size > 0))
    df = df[ok]
    if df.batch_size.nunique() < 2 or len(df) < 3:
        return None
    from scipy import stats

    fit = stats.linregress(np.log(df.batch_size), np.log(df.sharpness), alternative="greater")
    return Regression(slope=float(fit.slope), intercept=float(fit.intercept), r2=float(fit.rvalue**2),
                      p_value=float(fit.pvalue), n=len(df))


def frame(ds: xr.Dataset) -> pd.DataFrame:
    """One row per network (valid grid points only) with the bounds attached, its optimizer's settings
    (the optim coordinates), and its optimizer's stability threshold (``threshold``) on the sharpness
    that threshold is about (``edge_sharpness``: the plain one, or Adam's preconditioned one)."""
    cols = ["sharpness", "sharpness_exact", "status", "loss_train", "loss_test", "distance"]
    cols += [c for c in ("hessian_trace", "hessian_trace_minimizer", "sharpness_precond", "sharpness_avg",
                         "loss_train_avg", "loss_test_avg", "lambda_min", "grad_norm_sq", "failure") if c in ds]
    if "traj_sharpness" in ds:  # the edge-of-stability measurements of every sharpness trajectory
        ds = ds.assign(eos_measurements(ds))
        cols += list(EOS_COLUMNS)
    df = ds[cols].to_dataframe().reset_index()
    df = df[df.status != NO_NETWORK].copy()
    df["threshold"], df["edge_sharpness"] = np.nan, np.nan
    for name, rows in df.groupby("optimizer").groups.items():
        cls = steppers.get(name)
        sub = df.loc[rows]
        df.loc[rows, "threshold"] = cls.threshold(sub.lr.to_numpy(), sub)
        df.loc[rows, "edge_sharpness"] = sub[cls.edge_on] if cls.edge_on in sub else np.nan
    theory = ds[[c for c in ("s_min", "s_upper", "eta_c", "trace_min") if c in ds]].to_dataframe().reset_index()
    data = ds[["a", "lam_max", "w_norm", "loss_opt"]].to_dataframe().reset_index()
    df = df.merge(theory, on=["depth", *DATA_DIMS], how="left").merge(data, on=list(DATA_DIMS), how="left")
    return df


EOS_COLUMNS = ("eos_onset", "eos_above", "eos_sharpening", "eos_mean_after")


def eos_measurements(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    """:func:`dlnpipe.eos.edge_of_stability` of every sampled sharpness trajectory, as per-network arrays: onset
    step (−1: none), the fraction of later samples above 2/η, the sharpening slope before onset, the mean ηS
    after onset (docs/theory.md#the-edge-of-stability-measured)."""
    da = ds.traj_sharpness
    dims = [d for d in da.dims if d != "step"]
    flat = da.transpose(*dims, "step")
    lr = ds.lr.broadcast_like(flat.isel(step=0)).transpose(*dims)
    out = edge_of_stability(flat.values.reshape(-1, da.sizes["step"]), ds.step.values, lr.values.ravel())
    shape = [da.sizes[d] for d in dims]
    coords = {k: v for k, v in flat.isel(step=0).coords.items() if k != "step"}
    return {name: xr.DataArray(getattr(out, name.removeprefix("eos_")).reshape(shape).astype(float), dims=dims,
                               coords=coords) for name in EOS_COLUMNS}


def minimizer_bound(df: pd.DataFrame) -> pd.Series:
    """The lower bound on the sharpness at each network's minimizer (docs/theory.md#the-sharpness-and-its-lower-bound):
    2 L (w*ᵀΣw*) ‖w_prod‖^{−2/L} = S_min (‖w*‖² / (‖w*‖² + ‖w_prod − w*‖²))^{1/L}. With n ≥ d the minimizer's
    product is w* and this is S_min; with n < d it is any w* + (a null direction of Σ), orthogonal to w*."""
    w2 = df.w_norm**2
    return df.s_min * (w2 / (w2 + df.distance.fillna(0.0))) ** (1.0 / df.depth)


def checks(ds: xr.Dataset, *, tol=TOL, eos_overshoot=EOS_OVERSHOOT, exact_rtol=EXACT_RTOL) -> pd.DataFrame:
    """One row per network with, for each claim, whether it applies (``*_checked``) and fails (``*_fail``)."""
    df = frame(ds)
    conv = df.status == Status.CONVERGED
    linear = df["init"].isin(LINEAR)  # the bounds are linear theory: reference lines only for other nets
    df["c1_checked"] = conv & linear
    df["c1_fail"] = df.c1_checked & (df.sharpness < minimizer_bound(df) * (1 - tol))
    flow, gd = df.optimizer == "flow", df.optimizer.isin(GD_LIKE)
    small_lr = ((df.lr <= df.eta_c / 4) & (df.optimizer == "gd")) | flow  # gradient flow: the η → 0 limit itself
    df["c2_checked"] = conv & df["init"].isin(SMALL_INIT_LINEAR) & small_lr
    df["c2_fail"] = df.c2_checked & (df.sharpness > df.s_upper * (1 + tol))
    for claim, which in (("c3a", gd), ("c8", df.optimizer == "heavy_ball"), ("c9", df.optimizer == "adam")):
        df[f"{claim}_checked"] = conv & which & df.edge_sharpness.notna()
        df[f"{claim}_fail"] = df[f"{claim}_checked"] & (df.edge_sharpness > df.threshold * (1 + eos_overshoot))
    df["c3b_checked"] = (df.lr > df.eta_c) & linear & gd
    df["c3b_fail"] = df.c3b_checked & conv
    df["c4_checked"] = conv & linear & df.sharpness_exact.notna()
    df["c4_fail"] = df.c4_checked & ((df.sharpness - df.sharpness_exact).abs() > exact_rtol * df.sharpness_exact)
    minimizer_trace = df.get("hessian_trace_minimizer", pd.Series(np.nan, index=df.index))
    df["c7_checked"] = conv & linear & minimizer_trace.notna()
    df["c7_fail"] = df.c7_checked & (minimizer_trace < df.get("trace_min", np.nan) * (1 - tol))
    return df


def table(ds: xr.Dataset, **tolerances) -> pd.DataFrame:
    """Per (init, depth, width, kappa, spectrum, wstar, optim, lr): counts, bounds, sharpness ratios, the
    optimizer's threshold, claim checks."""
    df = checks(ds, **tolerances)
    conv = df.status == Status.CONVERGED
    keys = ["init", "depth", "width", *DATA_DIMS, "optim", "lr"]
    g = df.groupby(keys, sort=True)
    count = lambda status: lambda s: int((s == status).sum())  # noqa: E731
    out = g.agg(networks=("status", "size"), converged=("status", count(Status.CONVERGED)),
                failed=("status", count(Status.FAILED)), diverged=("status", count(Status.DIVERGED)),
                s_min=("s_min", "first"), s_upper=("s_upper", "first"), eta_c=("eta_c", "first"),
                threshold=("threshold", "first"), sharpness_median=("sharpness", "median"),
                sharpness_max=("sharpness", "max"), edge_sharpness_median=("edge_sharpness", "median"))
    conv_df = df[conv]
    ratio = (conv_df.sharpness / conv_df.s_min).groupby([conv_df[k] for k in keys]).agg(["min", "median", "max"])
    ratio.columns = ["ratio_min", "ratio_median", "ratio_max"]
    out = out.join(ratio)
    if "eos_onset" in df:  # the edge of stability along the sampled trajectories (onset −1: never reached)
        eos = df.assign(eos_onset=df.eos_onset.where(df.eos_onset >= 0))
        eg = eos.groupby(keys, sort=True)
        out = out.join(eg.agg(eos_reached=("eos_onset", "count"), eos_onset_median=("eos_onset", "median"),
                              eos_above_median=("eos_above", "median"),
                              eos_sharpening_median=("eos_sharpening", "median"),
                              eos_mean_after_median=("eos_mean_after", "median")))
    if "failure" in df:  # the failed networks by what holds them
        for kind in (FailureKind.UNSTABLE, FailureKind.SADDLE, FailureKind.SLOW):
            out[f"failed_{kind.meaning}"] = g["failure"].agg(lambda f, k=kind: int((f == k).sum()))
    if "hessian_trace_minimizer" in conv_df and "trace_min" in conv_df:  # tr H / T_min, next to S / S_min
        tr = (conv_df.hessian_trace_minimizer / conv_df.trace_min).groupby([conv_df[k] for k in keys])
        tr = tr.agg(["min", "median", "max"])
        tr.columns = ["trace_ratio_min", "trace_ratio_median", "trace_ratio_max"]
        out = out.join(tr)
    out.insert(out.columns.get_loc("eta_c") + 1, "two_over_lr", 2 / out.index.get_level_values("lr"))
    for c in CLAIMS:
        out[f"{c}_checked"] = g[f"{c}_checked"].sum().astype(int)
        out[f"{c}_fail"] = g[f"{c}_fail"].sum().astype(int)
    return out.reset_index()


CLAIMS = {
    "c1": "converged => S >= S_min (n < d: the bound at the minimizer reached, S_min (1 + |w - w*|^2/|w*|^2)^(-1/L))",
    "c2": "small init, eta <= eta_c/4, converged => S <= 8 L Lambda ||w*||^(2-2/L)",
    "c3a": "gd, sgd: converged => S <= 2/eta (10% edge-of-stability overshoot allowed)",
    "c3b": "gd, sgd: eta > eta_c => not converged",
    "c4": "converged => Lanczos sharpness = exact formula (rel. 1e-3)",
    "c7": "converged => tr H >= T_min = 2 L ||w*||^(2-2/L) (tr Sigma)^(1/L) a^(1-1/L) (closed form at the minimizer)",
    "c8": "heavy_ball: converged => S <= 1.1 (2 + 2 beta)/eta",
    "c9": "adam: converged => preconditioned sharpness lambda_max(P^-1 H) <= 1.1 (2 + 2 beta1)/((1 - beta1) eta)",
}
GD_LIKE = ("gd", "sgd")  # optimizers whose threshold is 2/η and to which η_c = 2/S_min applies


GROUP = ["init", *DATA_DIMS]


def ratios(ds: xr.Dataset) -> pd.DataFrame:
    """Linear networks, one row each, with S/S_min (``ratio``) and 4Λ/a (``four_lam_over_a``)."""
    df = frame(ds)
    df = df[df["init"].isin(LINEAR)].copy()
    df["ratio"] = df.sharpness / df.s_min
    df["four_lam_over_a"] = 4 * df.lam_max / df.a
    return df


def small_init_ratio(df: pd.DataFrame) -> pd.DataFrame:
    """Per (init, dataset, depth, width): the largest S/S_min over seeds at the *smallest* init scale
    where at least half the seeds converged — the run closest to the theorem's small init that
    reached a minimizer (smaller scales stall at the saddle, more so at large depth)."""
    conv = df.assign(ok=df.status == Status.CONVERGED)
    frac = conv.groupby([*GROUP, "depth", "width", "scale"]).ok.mean().rename("frac").reset_index()
    first = frac[frac.frac >= 0.5].groupby([*GROUP, "depth", "width"]).scale.min().rename("small_scale")
    pick = conv.merge(first.reset_index(), on=[*GROUP, "depth", "width"])
    pick = pick[(pick.scale == pick.small_scale) & pick.ok]
    return pick.groupby([*GROUP, "depth", "width"], as_index=False).agg(ratio=("ratio", "max"),
                                                                       scale=("scale", "first"))


def constant(ds: xr.Dataset) -> pd.DataFrame:
    """The empirical C(κ) per (init, kappa, spectrum, wstar), next to 4Λ/a:

    * ``C``: the largest S/S_min of converged networks over depth, width, scale and seeds, and where;
    * ``C_small_init``: the largest over depth and width of the ratio at the smallest converged
      scale (:func:`small_init_ratio`), the theorem's regime; ``depth_spread`` / ``width_spread``:
      largest over smallest of its per-depth (per-width) maxima (1 = flat in depth / width).
    """
    df = ratios(ds)
    if df.empty:
        return pd.DataFrame()
    small = small_init_ratio(df)
    rows = []
    for key, g in df.groupby(GROUP, sort=True):
        conv = g[g.status == Status.CONVERGED]
        row = dict(zip(GROUP, key))
        row.update(networks=len(g), converged=len(conv), failed=int((g.status == Status.FAILED).sum()),
                   diverged=int((g.status == Status.DIVERGED).sum()), four_lam_over_a=float(g.four_lam_over_a.iloc[0]))
        if len(conv):
            top = conv.loc[conv.ratio.idxmax()]
            row.update(C=float(top.ratio), at_depth=int(top.depth), at_width=int(top.width),
                       at_scale=float(top.scale))
        sm = small[(small[GROUP] == pd.Series(dict(zip(GROUP, key)))).all(axis=1)]
        if len(sm):
            per_depth, per_width = sm.groupby("depth").ratio.max(), sm.groupby("width").ratio.max()
            row.update(C_small_init=float(sm.ratio.max()), median_small_init=float(sm.ratio.median()),
                       depth_spread=float(per_depth.max() / per_depth.min()),
                       width_spread=float(per_width.max() / per_width.min()))
            row["C_small_over_bound"] = row["C_small_init"] / row["four_lam_over_a"]
        rows.append(row)
    return pd.DataFrame(rows)


def claims(tab: pd.DataFrame, ds: xr.Dataset) -> pd.DataFrame:
    rows = []
    per_net = checks(ds)
    for c, text in CLAIMS.items():
        checked, fails = int(tab[f"{c}_checked"].sum()), int(tab[f"{c}_fail"].sum())
        if c == "c2" and fails:
            # the small-init bound needs a small enough s (docs/theory.md#gradient-flow-from-small-initialisation):
            # say where it stops
            bad = per_net[per_net.c2_fail]
            ok_scales = per_net[per_net.c2_checked & (per_net.scale < bad.scale.min())].scale
            text += (f"; holds for s <= {ok_scales.max():.4g}, first violation at s = {bad.scale.min():.4g}"
                     if len(ok_scales) else f"; first violation at s = {bad.scale.min():.4g}")
        rows.append({"claim": c, "statement": text, "checked": checked, "violations": fails,
                     "verdict": "n/a" if checked == 0 else ("holds" if fails == 0 else "fails")})
    rows += eos_claims(ds)
    if ds.attrs.get("n_train", 0) < ds.attrs.get("d", 0):  # underdetermined: claims c6 and c10
        for claim, text, reg in (("c6", "log gap vs log S slope > 0", gap_regression(ds)),
                                 ("c10", "gd/sgd, no label noise: log S vs log batch size slope > 0 (smaller batches, "
                                         "flatter minima)", batch_regression(ds))):
            if reg is not None:
                holds = reg.slope > 0 and reg.p_value < 0.05
                rows.append({"claim": claim, "statement": f"{text} (slope {reg.slope:.3f}, R² {reg.r2:.3f}, "
                                                          f"one-sided p {reg.p_value:.2g}, n {reg.n})",
                             "checked": reg.n, "violations": int(not holds), "verdict": "holds" if holds else "fails"})
    return pd.DataFrame(rows)


PHI_RTOL = 1e-6  # φ_t is measured to about this (the flow's stop, the exact formula at its limit)
EDGE_RTOL = 0.1  # "near 2/η": within 10%
CENTRAL_RTOL = 0.1  # the central flow predicts GD's final sharpness and time-averaged loss within 10%
CENTRAL_FLOOR = 1e-6  # ... the loss to 10% of GD's excess loss or of CENTRAL_FLOOR · yᵀy/n, whichever is larger
BALANCE_RTOL = 1e-5  # the flow's drift of the balancing gaps, relative to the largest gap (solver tolerance)


def _optim_labels(ds: xr.Dataset, name: str) -> list:
    if "optim" not in ds.dims:
        return []
    return [x for x in ds.optim.values if str(ds.optimizer.sel(optim=x).values) == name]


def _row(claim: str, text: str, checked: int, violations: int) -> dict:
    return {"claim": claim, "statement": text, "checked": int(checked), "violations": int(violations),
            "verdict": "n/a" if checked == 0 else ("holds" if violations == 0 else "fails")}


def eos_claims(ds: xr.Dataset) -> list[dict]:
    """Claims c11–c14 (docs/theory.md#the-claims-the-tables-check), where the experiment has what they need."""
    gd, central, flow = (_optim_labels(ds, name) for name in ("gd", "central", "flow"))
    rows = []
    if gd and "traj_gfs_sharpness" in ds:
        rows += _gfs_claims(ds, gd)
    if gd and central and "traj_central_loss" in ds and "traj_sharpness" in ds:
        rows.append(_central_claim(ds.sel(optim=gd[0]), ds.sel(optim=central[0])))
    if flow and "balance" in ds:
        rows.append(_balance_claim(ds.sel(optim=flow)))
    return rows


def _gfs_claims(ds: xr.Dataset, gd: list) -> list[dict]:
    """c11 (φ_t non-increasing along GD) and c12 (where a converged GD run ends)."""
    phi = ds.traj_gfs_sharpness.sel(optim=gd)
    rise = (phi.diff("step").max("step") / phi.isel(step=0))  # the largest increase, relative to φ_0
    # along runs that did not diverge (a diverging run's φ grows as it is thrown out)
    ok = np.isfinite(rise.values) & (ds.status.sel(optim=gd) != Status.DIVERGED).values
    worst = float(np.nanmax(rise.values[ok])) if ok.any() else np.nan
    c11 = _row("c11", f"gd: phi_t non-increasing along a run that does not diverge (largest increase "
                      f"{worst:.3g} of phi_0; tolerance {PHI_RTOL:g})", ok.sum(), (rise.values[ok] > PHI_RTOL).sum())
    conv = (ds.status.sel(optim=gd) == Status.CONVERGED).values
    S, phi0 = ds.sharpness.sel(optim=gd).values, phi.isel(step=0).values
    edge = 2 / ds.lr.broadcast_like(ds.sharpness.sel(optim=gd)).values
    s_min = ds.s_min.broadcast_like(ds.sharpness.sel(optim=gd)).values
    far = np.abs(S - edge) > EDGE_RTOL * edge  # from 2/η
    bad = (S < s_min * (1 - TOL)) | (S > edge * (1 + EDGE_RTOL)) | ((phi0 > edge) & far)
    above = conv & (phi0 > edge)
    c12 = _row("c12", f"gd: converged => S_min <= S <= 1.1 (2/eta), and near 2/eta (10%) when phi_0 > 2/eta "
                      f"({int(above.sum())} such networks, median S eta/2 = "
                      f"{np.nanmedian((S / edge)[above]) if above.any() else np.nan:.3f})",
               conv.sum(), (conv & bad).sum())
    return [c11, c12]


def _central_claim(g: xr.Dataset, c: xr.Dataset) -> dict:
    """c13: the central flow's time-averaged sharpness and loss against GD's (``g``, ``c``: one optim label each)."""
    # where a minimizer is stable (η ≤ η_c: S_min ≤ 2/η) and GD did not diverge: past η_c GD's oscillation has no
    # minimizer to settle around, and the central flow, held at 2/η, describes nothing GD does
    below = (g.lr <= g.eta_c).broadcast_like(g.status)
    both = ((g.status >= 0) & (c.status >= 0) & (g.status != Status.DIVERGED) & below).values
    past = int(((g.status >= 0) & ~below).sum())
    # time averages over the last quarter of the samples: GD's sharpness and loss oscillate at the edge
    late = g.step >= float(g.step.max()) * 0.75
    S_gd = g.traj_sharpness.where(late).mean("step")
    S_err = (np.abs(c.traj_central_sharpness.where(late).mean("step") - S_gd) / S_gd).values
    avg_gd = g.traj_loss_train.where(late).mean("step") - g.loss_opt
    avg_c = c.traj_central_loss.where(late).mean("step") - g.loss_opt
    # relative to GD's excess loss, or to the loss scale yᵀy/n = R(0) = R* + a‖w*‖² where both sit at the floor
    floor = CENTRAL_FLOOR * (g.loss_opt + g.a * g.w_norm**2)
    L_err = (np.abs(avg_c - avg_gd) / np.maximum(np.abs(avg_gd), floor)).values
    ok = both & np.isfinite(S_err) & np.isfinite(L_err)
    med = lambda a: float(np.nanmedian(a[ok])) if ok.any() else np.nan  # noqa: E731
    worst = lambda a: float(np.nanmax(a[ok])) if ok.any() else np.nan  # noqa: E731
    return _row("c13", f"central flow vs gd, same init, eta <= eta_c, time averages over the last quarter: "
                       f"sharpness within 10% (median {med(S_err):.3g}, largest {worst(S_err):.3g}) "
                       f"and excess loss within 10% (median {med(L_err):.3g}, largest {worst(L_err):.3g}; "
                       f"{past} networks past eta_c left out)",
                ok.sum(), (ok & ((S_err > CENTRAL_RTOL) | (L_err > CENTRAL_RTOL))).sum())


def _balance_claim(flow: xr.Dataset) -> dict:
    """c14: gradient flow conserves the balancing gaps (``flow``: the experiment at the flow's optim labels)."""
    drift = (np.abs(flow.balance - flow.balance_init).max("layer") / flow.balance_init.max("layer")).values
    ok = np.isfinite(drift)
    worst = np.nanmax(drift) if ok.any() else np.nan
    return _row("c14", f"flow: balancing gaps conserved (largest drift {worst:.3g} of the largest gap; "
                       f"tolerance {BALANCE_RTOL:g})", ok.sum(), (drift[ok] > BALANCE_RTOL).sum())

