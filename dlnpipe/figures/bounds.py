"""Figures of the bounds experiment (beyond the paper): the sharpness ratio S/S_min of converged
networks across condition number, depth and width, the structure of the learned layers, and the
top of the Hessian spectrum.

``ratio_kappa``  S/S_min at the smallest converged init scale (max over seeds) against κ, one line
                 per (depth, width), a panel per (init, spectrum, w* direction), with the small-init
                 bound 4Λ/a (dashed);
``ratio_depth``  the same against depth (solid; worst case over width), one line per (κ, spectrum),
                 a panel per (init, w*): flat if the constant does not depend on depth; dotted: the
                 largest ratio over all init scales (large scales leave the theorem's regime);
``ratio_width``  the same against width;
``structure``    σ₂/σ₁ per layer, alignment of consecutive layers and of the first layer with w*,
                 against the init scale (small init → rank one and aligned);
``topk``         the top-k Hessian eigenvalues at the minimizer, over S_min, against depth.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import pandas as pd
import seaborn as sns
import xarray as xr

from dlnpipe.analysis import LINEAR, ratios, small_init_ratio
from dlnpipe.figures.common import plain_log
from dlnpipe.status import Status

RATIO_LABEL = "S / S_min"


def _ratios(ds: xr.Dataset) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(converged linear networks with S/S_min and 4Λ/a, the small-init ratio per cell and dataset)."""
    df = ratios(ds)
    return df[df.status == Status.CONVERGED], small_init_ratio(df)


def _panel_grid(rows: list, cols: list, *, w=4.2, h=3.2):
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(w * len(cols), h * len(rows)), squeeze=False,
                             sharey="row")
    return fig, axes


def _legend_right(fig, ax, title: str) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, title=title, loc="upper left", bbox_to_anchor=(1.0, 0.98), frameon=False,
                   fontsize=8, title_fontsize=9)


def ratio_kappa(ds: xr.Dataset):
    df, small = _ratios(ds)
    rows = [(i, s) for i in ds.init.values for s in ds.spectrum.values]
    cols = list(ds.wstar.values)
    fig, axes = _panel_grid(rows, cols)
    depths = sorted(int(x) for x in ds.depth.values)
    pal = dict(zip(depths, sns.color_palette("rocket_r", len(depths) + 1)[1:]))
    widths = sorted(int(x) for x in ds.width.values)
    marks = dict(zip(widths, ["o", "s", "^", "D", "v", "P"]))
    bound = df.groupby(["spectrum", "wstar", "kappa"]).four_lam_over_a.first()
    for r, (init, spectrum) in enumerate(rows):
        for c, wstar in enumerate(cols):
            ax = axes[r, c]
            sub = small[(small["init"] == init) & (small.spectrum == spectrum) & (small.wstar == wstar)]
            for (L, m), g in sub.groupby(["depth", "width"]):
                g = g.sort_values("kappa")
                ax.plot(g.kappa, g.ratio, marker=marks[m], color=pal[L], lw=1, ms=4, label=f"L={L}, m={m}")
            if (spectrum, wstar) in bound.index.droplevel("kappa"):
                b = bound.loc[(spectrum, wstar)]
                ax.plot(b.index, b.values, ls="--", color="k", lw=1.2, label="4Λ/a")
            ax.axhline(1, ls=":", color="0.5", lw=1)
            ax.set(xscale="log", yscale="log", title=f"{init}, {spectrum}, w* {wstar}", xlabel="κ")
            plain_log(ax)
            plain_log(ax, "x")
            if c == 0:
                ax.set_ylabel(RATIO_LABEL + " (small init)")
    _legend_right(fig, axes[0, 0], "depth, width")
    return fig


def _ratio_against(ds: xr.Dataset, axis: str):
    df, small = _ratios(ds)
    other = "width" if axis == "depth" else "depth"
    inits, cols = list(ds.init.values), list(ds.wstar.values)
    fig, axes = _panel_grid(inits, cols)
    kappas = sorted(float(k) for k in ds.kappa.values)
    pal = dict(zip(kappas, sns.color_palette("viridis", len(kappas))))
    styles = dict(zip(sorted(ds.spectrum.values), ["-", "--", "-.", (0, (5, 1, 1, 1))]))
    for r, init in enumerate(inits):
        for c, wstar in enumerate(cols):
            ax = axes[r, c]
            keys = ["kappa", "spectrum", axis]
            # worst case over the other axis: what the constant C must cover
            sm = small[(small["init"] == init) & (small.wstar == wstar)].groupby(keys, as_index=False).ratio.max()
            every = df[(df["init"] == init) & (df.wstar == wstar)].groupby(keys, as_index=False).ratio.max()
            for (k, spectrum), g in sm.groupby(["kappa", "spectrum"]):
                ax.plot(g[axis], g.ratio, marker="o", ms=4, color=pal[k], ls=styles[spectrum],
                        label=f"κ={k:g}, {spectrum}")
            for (k, _), g in every.groupby(["kappa", "spectrum"]):
                ax.plot(g[axis], g.ratio, ls=":", lw=0.9, color=pal[k], alpha=0.6)
            ax.axhline(1, ls=":", color="0.5", lw=1)
            ax.set(xscale="log", yscale="log", title=f"{init}, w* {wstar}", xlabel=axis)
            ax.set_xticks(sorted(ds[axis].values), [str(int(v)) for v in sorted(ds[axis].values)])
            ax.xaxis.set_minor_locator(mticker.NullLocator())
            plain_log(ax)
            if c == 0:
                ax.set_ylabel(f"{RATIO_LABEL}, max over {other}")
    ax = axes[0, 0]
    ax.plot([], [], ls=":", color="0.3", label="any init scale")
    _legend_right(fig, ax, "small init: κ, spectrum")
    return fig


def ratio_depth(ds: xr.Dataset):
    return _ratio_against(ds, "depth")


def ratio_width(ds: xr.Dataset):
    return _ratio_against(ds, "width")


def structure(ds: xr.Dataset):
    """σ₂/σ₁ and alignment per layer against the init scale (converged networks, median over datasets
    and seeds), for the middle depth and smallest width."""
    depths = sorted(int(x) for x in ds.depth.values)
    L = depths[len(depths) // 2]
    m = int(ds.width.min())
    sub = ds.sel(depth=L, width=m)
    inits = list(ds.init.values)
    fig, axes = plt.subplots(len(inits), 3, figsize=(13, 3.3 * len(inits)), squeeze=False)
    layers = [k for k in sub.layer.values if k <= L]
    pal = dict(zip(layers, sns.color_palette("crest", len(layers))))
    for r, init in enumerate(inits):
        one = sub.sel(init=init)
        ok = one.status == Status.CONVERGED
        for k in layers:
            ratio = one.sv_ratio.sel(layer=k).where(ok)
            med = ratio.median([d for d in ratio.dims if d != "scale"])
            axes[r, 0].plot(one.scale, med, marker="o", ms=3, color=pal[k], label=f"W_{k}")
            if k < L:
                al = one.alignment.sel(layer=k).where(ok)
                axes[r, 1].plot(one.scale, al.median([d for d in al.dims if d != "scale"]), marker="o", ms=3,
                                color=pal[k], label=f"W_{k}→W_{k + 1}")
        ia = one.input_alignment.where(ok)
        axes[r, 2].plot(one.scale, ia.median([d for d in ia.dims if d != "scale"]), marker="o", color="k")
        axes[r, 0].set(ylim=(-0.03, 1.03), ylabel="σ₂/σ₁ (median; 0 = rank one)", xlabel="init scale s",
                       title=f"{init}, L={L}, m={m}: rank one?")
        axes[r, 1].set(ylim=(-0.03, 1.03), ylabel="|⟨v_{k+1}, u_k⟩| (median)", xlabel="init scale s",
                       title="consecutive layers aligned?")
        axes[r, 2].set(ylim=(-0.03, 1.03), ylabel="|⟨v_1, w*/‖w*‖⟩| (median)", xlabel="init scale s",
                       title="first layer aligned with w*?")
    for ax in axes[0, :2]:
        ax.legend(fontsize=6, ncol=2, frameon=False)
    return fig


def topk(ds: xr.Dataset):
    """The top-k Hessian eigenvalues of converged networks over S_min, against depth."""
    df = ds[["sharpness_topk", "status"]].to_dataframe().reset_index()
    df = df[(df.status == Status.CONVERGED) & df["init"].isin(LINEAR)]
    theory = ds[["s_min"]].to_dataframe().reset_index()
    df = df.merge(theory, on=["depth", "kappa", "spectrum", "wstar"])
    df["ratio"] = df.sharpness_topk / df.s_min
    inits, kappas = list(ds.init.values), sorted(float(k) for k in ds.kappa.values)
    fig, axes = _panel_grid(inits, kappas)
    ranks = sorted(int(e) for e in ds.eig.values)
    pal = dict(zip(ranks, sns.color_palette("flare", len(ranks))))
    for r, init in enumerate(inits):
        for c, k in enumerate(kappas):
            ax = axes[r, c]
            sub = df[(df["init"] == init) & (df.kappa == k)]
            if len(sub):
                sns.lineplot(sub, x="depth", y="ratio", hue="eig", palette=pal, estimator="median",
                             errorbar=("pi", 90), marker="o", ax=ax, legend=(r == 0 and c == 0))
            ax.axhline(1, ls=":", color="0.5", lw=1)
            ax.set(xscale="log", yscale="log", title=f"{init}, κ={k:g}", xlabel="depth L",
                   ylabel="λ_i / S_min (median, 90% range)")
            ax.set_xticks(sorted(ds.depth.values), [str(int(v)) for v in sorted(ds.depth.values)])
            ax.xaxis.set_minor_locator(mticker.NullLocator())
            plain_log(ax)
    if axes[0, 0].get_legend() is not None:
        axes[0, 0].get_legend().remove()
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, [f"λ_{int(x) + 1}" for x in labels], title="eigenvalue", loc="upper left",
                   bbox_to_anchor=(1.0, 0.98), frameon=False)
    return fig
