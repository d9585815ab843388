"""The paper's figures (and their residual / GELU / ReLU versions) from an experiment of the cube.

``fig1a`` squared distance to w* (divided by d, the paper's scale) against the init scale, one line
per η; ``fig1b`` final sharpness against the init scale with 2/η (dashed), S_min (dotted) and
8LΛ‖w*‖^{2−2/L} (dash-dot, small-init linear nets) reference lines; ``fig3`` probability of
divergence; ``trajectories`` distance and sharpness along training (Fig 1c/1d); ``fig2`` final
distance against η per depth with η_c lines; ``fig6a`` sharpness (underdetermined); ``fig6b`` log
generalisation gap against log sharpness with its regression. Lines are means over seeds with 95%
bootstrap intervals; grid axes with several values (init, depth, width, kappa, spectrum, wstar)
become panels.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from dlnpipe import archs
from dlnpipe.analysis import gap_regression
from dlnpipe.figures.common import CI, N_BOOT, constant, frame, grid, legend, lr_palette, panels, select, title
from dlnpipe.status import Status


def fig_distance(ds, axes_sel):
    pal = lr_palette(ds)
    d = ds.attrs.get("d", 1)
    for ax, sel in axes_sel:
        sub = select(ds, sel)
        df = frame(sub, "distance")
        df = df[df.status != Status.DIVERGED].assign(distance=lambda f: f.distance / d)
        sns.lineplot(df, x="scale", y="distance", hue="lr", palette=pal, errorbar=CI, n_boot=N_BOOT, seed=0,
                     marker="o", ax=ax)
        ax.set(yscale="log", xlabel="initialisation scale s", ylabel="mean (w_prod − w*)²  (‖·‖²/d)")
        legend(ax, "η")


def fig_sharpness(ds, axes_sel):
    pal = lr_palette(ds)
    for ax, sel in axes_sel:
        sub = select(ds, sel)
        df = frame(sub, "sharpness")
        df = df[df.status == Status.CONVERGED]
        if len(df):
            sns.lineplot(df, x="scale", y="sharpness", hue="lr", palette=pal, errorbar=CI, n_boot=N_BOOT, seed=0,
                         marker="o", ax=ax)
        for lr, color in pal.items():
            ax.axhline(2 / lr, ls="--", color=color, lw=1)
        ax.axhline(constant(ds, "s_min", sel), ls=":", color="k", lw=1.5, label="S_min")
        arch = archs.get(str(sel.get("init", ds.init.values[0])))
        if arch.linear and arch.small_init:  # the small-init theorem's bound
            ax.axhline(constant(ds, "s_upper", sel), ls="-.", color="0.4", lw=1.2, label=r"$8L\Lambda\|w^*\|^{2-2/L}$")
        ax.set(yscale="log", xlabel="initialisation scale s", ylabel="sharpness S (converged runs)")
        legend(ax, "η (dashed: 2/η)")


def fig_divergence(ds, axes_sel):
    pal = lr_palette(ds)
    for ax, sel in axes_sel:
        df = frame(select(ds, sel), "status")
        df["diverged"] = (df.status == Status.DIVERGED).astype(float)
        sns.lineplot(df, x="scale", y="diverged", hue="lr", palette=pal, errorbar=CI, n_boot=N_BOOT, seed=0,
                     marker="o", ax=ax)
        ax.set(ylim=(-0.03, 1.03), xlabel="initialisation scale s", ylabel="probability of divergence")
        legend(ax, "η")


def fig_trajectories(ds, sels):
    has_sharp = "traj_sharpness" in ds
    pal = lr_palette(ds)
    ncol = 3 if has_sharp else 2
    fig, axes = plt.subplots(len(sels), ncol, figsize=(4.2 * ncol, 3.3 * len(sels)), squeeze=False)
    d = ds.attrs.get("d", 1)
    for row, sel in zip(axes, sels):
        sub = select(ds, sel).isel(seed=0)
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
        row[0].set(yscale="log", xlabel="step", ylabel="(w_prod − w*)² / d", title=title(sel, ds))
        row[1].set(yscale="log", xlabel="step", ylabel="training loss")
        if has_sharp:
            row[2].axhline(constant(ds, "s_min", sel), ls=":", color="k", label="S_min")
            row[2].set(yscale="log", xlabel="step", ylabel="sharpness (Lanczos)")
        for ax in row:
            ax.legend(fontsize=7, frameon=False)
    return fig


def fig_lr_sweep(ds, axes_sel):
    d = ds.attrs.get("d", 1)
    depths = [int(x) for x in ds.depth.values]
    pal = dict(zip(depths, sns.color_palette("rocket", len(depths))))
    for ax, sel in axes_sel:
        df = frame(select(ds, sel), "distance")
        df = df[df.status != Status.DIVERGED].assign(distance=lambda f: f.distance / d)
        sns.lineplot(df, x="lr", y="distance", hue="depth", palette=pal, errorbar=CI, n_boot=N_BOOT, seed=0,
                     marker="o", ax=ax)
        for L in depths:
            ax.axvline(constant(ds, "eta_c", {**sel, "depth": L}), ls="--", color=pal[L], lw=1)
        ax.set(xscale="log", yscale="log", xlabel="learning rate η (dashed: η_c per depth)",
               ylabel="final (w_prod − w*)² / d")
        legend(ax, "depth L")


def fig_gap(ds, axes_sel):
    for ax, sel in axes_sel:
        sub = select(ds, sel)
        reg = gap_regression(sub)
        lr = float(sub.lr.min())
        one = sub.sel(lr=lr)
        ok = (one.status == Status.CONVERGED) & (one.loss_test > one.loss_train)
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


def _panel_figure(ds, draw_panels, *, exclude=()):
    """One panel per combination of the grid axes with several values (but ``exclude``)."""
    sels = panels(ds, exclude=exclude)
    fig, axes = grid(len(sels))
    for ax, sel in zip(axes, sels):
        ax.set_title(title(sel, ds))
    draw_panels(ds, list(zip(axes, sels)))
    return fig


def fig1a(ds):
    return _panel_figure(ds, fig_distance)


def fig1b(ds):
    return _panel_figure(ds, fig_sharpness)


def fig3(ds):
    return _panel_figure(ds, fig_divergence)


def fig2(ds):
    return _panel_figure(ds, fig_lr_sweep, exclude=("depth",))


def fig6a(ds):
    return _panel_figure(ds, fig_sharpness)


def fig6b(ds):
    return _panel_figure(ds, fig_gap)


def trajectories(ds):
    return fig_trajectories(ds, panels(ds))
