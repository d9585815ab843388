"""Stage plot_*: the paper's figures (and their residual / GELU versions) from the cube, in one style.

Figures (PAPER.md §4): ``fig1a`` squared distance to w* (divided by d, the paper's scale) against
the init scale, one line per η; ``fig1b`` final sharpness against the init scale with 2/η (dashed),
S_min (dotted) and 8LΛ‖w*‖^{2−2/L} (dash-dot, small init) reference lines; ``fig3`` probability of
divergence; ``trajectories`` distance and sharpness along training (Fig 1c/1d); ``fig2`` final
distance against η per depth with η_c lines; ``fig6a`` sharpness (underdetermined); ``fig6b`` log
generalisation gap against log sharpness with its regression. Lines are means over seeds with 95%
bootstrap intervals; grid axes with several values (init, depth, width, kappa, spectrum, wstar)
become panels. The figures of the bounds experiment are in :mod:`dlnpipe.stages.bounds_figures`.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import xarray as xr  # noqa: E402

from dlnpipe.stages.compare_bounds import gap_regression  # noqa: E402
from dlnpipe.stages.cube import open_cube  # noqa: E402

FACETS = ("init", "depth", "width", "kappa", "spectrum", "wstar")
THEORY_DIMS = ("depth", "kappa", "spectrum", "wstar")  # what the theory constants depend on
CI = ("ci", 95)
N_BOOT = 500


def style():
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "axes.titlesize": 10, "legend.fontsize": 8})


def _panels(ds: xr.Dataset, exclude=()):
    dims = [d for d in FACETS if d not in exclude and ds.sizes.get(d, 1) > 1]
    combos = list(itertools.product(*[ds[d].values for d in dims])) or [()]
    return [dict(zip(dims, c)) for c in combos]


def _grid(n: int, *, width=5.4, height=3.6):
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _title(sel: dict, ds: xr.Dataset) -> str:
    parts = [f"{k}={v:g}" if isinstance(v, (float, np.floating)) else f"{k}={v}" for k, v in sel.items()]
    return ", ".join(parts)


def _legend(ax, title: str) -> None:
    """Legends sit outside the axes, right of the panel, so no curve hides behind them."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, title=title, fontsize=7, title_fontsize=8, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), frameon=False)


def _sel(ds: xr.Dataset, sel: dict) -> xr.Dataset:
    """The panel's slice, with the remaining single-valued grid axes dropped."""
    sub = ds.sel(sel)
    return sub.squeeze([d for d in FACETS if d in sub.dims and sub.sizes[d] == 1])


def _frame(ds: xr.Dataset, var: str) -> pd.DataFrame:
    df = ds[[var, "status"]].to_dataframe().reset_index()
    return df[df.status >= 0]


def _lr_palette(ds: xr.Dataset):
    lrs = sorted(float(x) for x in ds.lr.values)
    return dict(zip(lrs, sns.color_palette("viridis", len(lrs))))


def _one(ds: xr.Dataset, var: str, sel: dict) -> float:
    """A theory constant (on depth and the dataset) for a panel."""
    da = ds[var]
    for d in THEORY_DIMS:
        if d in da.dims:
            da = da.sel({d: sel[d]}) if d in sel else da.isel({d: 0})
    return float(da)


def fig_distance(ds, axes_sel):
    pal = _lr_palette(ds)
    d = ds.attrs.get("d", 1)
    for ax, sel in axes_sel:
        sub = _sel(ds, sel)
        df = _frame(sub, "distance")
        df = df[df.status != 2].assign(distance=lambda f: f.distance / d)
        sns.lineplot(df, x="scale", y="distance", hue="lr", palette=pal, errorbar=CI, n_boot=N_BOOT, seed=0,
                     marker="o", ax=ax)
        ax.set(yscale="log", xlabel="initialisation scale s", ylabel="mean (w_prod − w*)²  (‖·‖²/d)")
        _legend(ax, "η")


def fig_sharpness(ds, axes_sel):
    pal = _lr_palette(ds)
    for ax, sel in axes_sel:
        sub = _sel(ds, sel)
        df = _frame(sub, "sharpness")
        df = df[df.status == 0]
        if len(df):
            sns.lineplot(df, x="scale", y="sharpness", hue="lr", palette=pal, errorbar=CI, n_boot=N_BOOT, seed=0,
                         marker="o", ax=ax)
        for lr, color in pal.items():
            ax.axhline(2 / lr, ls="--", color=color, lw=1)
        ax.axhline(_one(ds, "s_min", sel), ls=":", color="k", lw=1.5, label="S_min")
        inits = sel.get("init", ds.init.values[0])
        if inits == "small":
            ax.axhline(_one(ds, "s_upper", sel), ls="-.", color="0.4", lw=1.2, label=r"$8L\Lambda\|w^*\|^{2-2/L}$")
        ax.set(yscale="log", xlabel="initialisation scale s", ylabel="sharpness S (converged runs)")
        _legend(ax, "η (dashed: 2/η)")


def fig_divergence(ds, axes_sel):
    pal = _lr_palette(ds)
    for ax, sel in axes_sel:
        df = _frame(_sel(ds, sel), "status")
        df["diverged"] = (df.status == 2).astype(float)
        sns.lineplot(df, x="scale", y="diverged", hue="lr", palette=pal, errorbar=CI, n_boot=N_BOOT, seed=0,
                     marker="o", ax=ax)
        ax.set(ylim=(-0.03, 1.03), xlabel="initialisation scale s", ylabel="probability of divergence")
        _legend(ax, "η")


def fig_trajectories(ds, panels):
    has_sharp = "traj_sharpness" in ds
    pal = _lr_palette(ds)
    ncol = 3 if has_sharp else 2
    fig, axes = plt.subplots(len(panels), ncol, figsize=(4.2 * ncol, 3.3 * len(panels)), squeeze=False)
    d = ds.attrs.get("d", 1)
    for row, sel in zip(axes, panels):
        sub = _sel(ds, sel).isel(seed=0)
        dashes = ["-", "--", ":", "-."]
        for lr in sub.lr.values:
            for j, s in enumerate(sub.scale.values):
                one = sub.sel(lr=lr, scale=s)
                style = dict(color=pal[float(lr)], ls=dashes[j % len(dashes)])
                label = f"η={lr:g}" + (f", s={s:g}" if sub.sizes["scale"] > 1 else "")
                row[0].plot(one.step, one.traj_distance / d, label=label, **style)
                row[1].plot(one.step, one.traj_loss_train, label=label, **style)
                if has_sharp:
                    row[2].plot(one.step, one.traj_sharpness, label=label, **style)
                    row[2].axhline(2 / float(lr), ls=(0, (6, 3)), color=pal[float(lr)], lw=0.8)
        row[0].set(yscale="log", xlabel="step", ylabel="(w_prod − w*)² / d", title=_title(sel, ds))
        row[1].set(yscale="log", xlabel="step", ylabel="training loss")
        if has_sharp:
            row[2].axhline(_one(ds, "s_min", sel), ls=":", color="k", label="S_min")
            row[2].set(yscale="log", xlabel="step", ylabel="sharpness (Lanczos)")
        for ax in row:
            ax.legend(fontsize=7, frameon=False)
    return fig


def fig_lr_sweep(ds, axes_sel):
    d = ds.attrs.get("d", 1)
    depths = [int(x) for x in ds.depth.values]
    pal = dict(zip(depths, sns.color_palette("rocket", len(depths))))
    for ax, sel in axes_sel:
        df = _frame(_sel(ds, sel), "distance")
        df = df[df.status != 2].assign(distance=lambda f: f.distance / d)
        sns.lineplot(df, x="lr", y="distance", hue="depth", palette=pal, errorbar=CI, n_boot=N_BOOT, seed=0,
                     marker="o", ax=ax)
        for L in depths:
            ax.axvline(_one(ds, "eta_c", {**sel, "depth": L}), ls="--", color=pal[L], lw=1)
        ax.set(xscale="log", yscale="log", xlabel="learning rate η (dashed: η_c per depth)",
               ylabel="final (w_prod − w*)² / d")
        _legend(ax, "depth L")


def fig_gap(ds, axes_sel):
    for ax, sel in axes_sel:
        sub = _sel(ds, sel)
        reg = gap_regression(sub)
        lr = float(sub.lr.min())
        one = sub.sel(lr=lr)
        ok = (one.status == 0) & (one.loss_test > one.loss_train)
        x = np.log(one.sharpness.where(ok).values.ravel())
        y = np.log((one.loss_test - one.loss_train).where(ok).values.ravel())
        keep = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[keep], y[keep], s=10, alpha=0.6, color=sns.color_palette()[0])
        if reg is not None:
            xs = np.linspace(x[keep].min(), x[keep].max(), 50)
            ax.plot(xs, reg.intercept + reg.slope * xs, color="k")
            ax.text(0.03, 0.97, f"slope {reg.slope:.3f}\nR² {reg.r2:.3f}\np (slope > 0) {reg.p_value:.2g}\n"
                    f"n {reg.n}", transform=ax.transAxes, va="top", fontsize=8,
                    bbox=dict(facecolor="white", alpha=0.8, edgecolor="0.8"))
        ax.set(xlabel="log sharpness", ylabel="log (test − train loss)", title=f"η={lr:g}")


PANEL_FIGURES = {"fig1a": fig_distance, "fig1b": fig_sharpness, "fig3": fig_divergence, "fig2": fig_lr_sweep,
                 "fig6a": fig_sharpness, "fig6b": fig_gap}
TITLES = {"fig1a": "distance to the optimal regressor", "fig1b": "sharpness after training",
          "fig3": "divergence", "fig2": "distance against learning rate", "fig6a": "sharpness (underdetermined)",
          "fig6b": "generalisation gap against sharpness", "trajectories": "trajectories"}


def draw(ds: xr.Dataset, figure: str):
    from dlnpipe.stages import bounds_figures

    style()
    if figure in bounds_figures.FIGURES:
        fig = bounds_figures.FIGURES[figure](ds)
        fig.suptitle(f"{ds.attrs.get('experiment', '')}: {bounds_figures.TITLES[figure]}", y=1.0)
        fig.tight_layout()
        return fig
    if figure == "trajectories":
        fig = fig_trajectories(ds, _panels(ds))
    else:
        panels = _panels(ds, exclude=("depth",) if figure == "fig2" else ())
        fig, axes = _grid(len(panels))
        for ax, sel in zip(axes, panels):
            ax.set_title(_title(sel, ds))
        PANEL_FIGURES[figure](ds, list(zip(axes, panels)))
    fig.suptitle(f"{ds.attrs.get('experiment', '')}: {TITLES[figure]}", y=1.0)
    fig.tight_layout()
    return fig


def run(cube_path: str | Path, experiment: str, figure: str, png: str | Path, pdf: str | Path) -> None:
    ds = open_cube(cube_path)[experiment].to_dataset()
    fig = draw(ds, figure)
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, bbox_inches="tight")
    fig.savefig(pdf, bbox_inches="tight", metadata={"CreationDate": None})
    plt.close(fig)
