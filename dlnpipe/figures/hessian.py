"""Figures of the Hessian beyond its top eigenvalue: spectral density, trace, and trace against sharpness.

``density``             the spectral density at init (dashed) and at the end (solid) of one network per
                        init scale (a few scales, the first seed), a panel per learning rate, log density
                        against the eigenvalue, with S_min (dotted) and 2/η (dashed) marked;
``trace``               tr H against the init scale, one line per η (mean and 95% interval over seeds,
                        converged networks), with T_min (dotted) and the balanced minimizer's trace
                        (dash-dot): the counterpart of Fig 1b;
``trace_vs_sharpness``  S/S_min against tr H/T_min for every converged linear network: are the sharpest
                        minimizers also the ones with the largest trace?
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import xarray as xr

from dlnpipe.analysis import LINEAR
from dlnpipe.figures.common import (
    CI,
    N_BOOT,
    constant,
    frame,
    grid,
    legend,
    lr_palette,
    panels,
    plain_log,
    select,
    title,
)
from dlnpipe.status import Status


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def density(ds: xr.Dataset, *, scales: int = 3, sigma_fraction: float = 0.01):
    if "density_nodes" not in ds:
        fig, ax = plt.subplots(figsize=(5.4, 3.6))
        _no_data(ax, "no spectral density measured (set density: true)")
        return fig
    sels = [{**sel, "lr": lr} for sel in panels(ds) for lr in ds.lr.values]
    fig, axes = grid(len(sels))
    pick = np.unique(np.linspace(0, ds.sizes["scale"] - 1, scales).round().astype(int))
    pal = dict(zip(pick, sns.color_palette("flare", len(pick))))
    for ax, sel in zip(axes, sels):
        sub = select(ds, sel).isel(seed=0)
        nodes = np.concatenate([sub[v].values.ravel() for v in ("density_nodes", "density_nodes_init")])
        lo, hi = np.nanmin(nodes), np.nanmax(nodes)
        span = hi - lo if np.isfinite(hi - lo) and hi > lo else 1.0
        lam = np.linspace(lo - 0.05 * span, hi + 0.05 * span, 800)
        for i in pick:
            one = sub.isel(scale=i)
            for when, ls in (("", "-"), ("_init", "--")):
                nd, wt = one[f"density_nodes{when}"].values, one[f"density_weights{when}"].values
                if not np.isfinite(nd).any():
                    continue
                z = (lam[None, None, :] - nd[..., None]) / (sigma_fraction * span)
                rho = (np.nan_to_num(wt)[..., None] * np.exp(-0.5 * z**2)).sum(1).mean(0) / (
                    sigma_fraction * span * np.sqrt(2 * np.pi))
                ax.plot(lam, np.maximum(rho, 1e-8), ls=ls, color=pal[i], lw=1.2,
                        label=f"s={float(one.scale):.3g}" + (" (init)" if when else ""))
        ax.axvline(constant(ds, "s_min", sel), ls=":", color="k", lw=1.2, label="S_min")
        ax.axvline(2 / float(sel["lr"]), ls="--", color="0.4", lw=1, label="2/η")
        ax.set(yscale="log", ylim=(1e-6, None), xlabel="Hessian eigenvalue λ", ylabel="spectral density",
               title=title(sel, ds))
        legend(ax, "init scale (dashed: init)")
    return fig


def trace(ds: xr.Dataset):
    sels = panels(ds)
    fig, axes = grid(len(sels))
    pal = lr_palette(ds)
    for ax, sel in zip(axes, sels):
        sub = select(ds, sel)
        df = frame(sub, "hessian_trace")
        df = df[df.status == Status.CONVERGED]
        if len(df):
            sns.lineplot(df, x="scale", y="hessian_trace", hue="lr", palette=pal, errorbar=CI, n_boot=N_BOOT,
                         seed=0, marker="o", ax=ax)
        else:
            _no_data(ax, "no converged networks")
        if str(sel.get("init", ds.init.values[0])) in LINEAR:
            ax.axhline(constant(ds, "trace_min", sel), ls=":", color="k", lw=1.5, label="T_min")
            ax.axhline(constant(ds, "trace_balanced", sel), ls="-.", color="0.4", lw=1.2, label="balanced minimizer")
        ax.set(yscale="log", xlabel="initialisation scale s", ylabel="tr H (converged runs)", title=title(sel, ds))
        legend(ax, "η")
    return fig


def trace_vs_sharpness(ds: xr.Dataset):
    cols = ["sharpness", "hessian_trace_minimizer", "status", "s_min", "trace_min"]
    df = ds[cols].to_dataframe().reset_index()
    df = df[(df.status == Status.CONVERGED) & df["init"].isin(LINEAR) & df.hessian_trace_minimizer.notna()]
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    if not len(df):
        _no_data(ax, "no converged linear networks")
        return fig
    df = df.assign(ratio=df.sharpness / df.s_min, trace_ratio=df.hessian_trace_minimizer / df.trace_min)
    sns.scatterplot(df, x="trace_ratio", y="ratio", hue="lr", palette=lr_palette(ds), s=14, alpha=0.7, ax=ax,
                    edgecolor="none")
    rho = np.corrcoef(np.log(df.trace_ratio), np.log(df.ratio))[0, 1] if len(df) > 2 else np.nan
    ax.text(0.03, 0.97, f"log-log correlation {rho:.2f}\nn = {len(df)}", transform=ax.transAxes, va="top",
            fontsize=8, bbox=dict(facecolor="white", alpha=0.8, edgecolor="0.8"))
    ax.set(xscale="log", yscale="log", xlabel="tr H / T_min (closed form at the minimizer)", ylabel="S / S_min")
    plain_log(ax)
    plain_log(ax, "x")
    legend(ax, "η")
    return fig
