"""The optimizers side by side (heavy ball, Adam, mini-batch SGD, label noise; dlnpipe.steppers).

``optim_sharpness``: S/S_min of converged networks against the init scale, one panel per optimizer
setting, each with its own stability threshold per η (dashed: 2/η for GD and SGD, (2 + 2β)/η for
heavy ball; Adam's (2 + 2β1)/((1 − β1)η) is on its preconditioned sharpness λ_max(P⁻¹H), drawn as
crosses next to the plain sharpness). ``optim_trajectories``: the sharpness along training against
each optimizer's threshold (Adam: plain and preconditioned). ``optim_batch``: the final sharpness and
generalisation gap against the batch size (gd and sgd), with and without label noise; runs with label
noise never settle and are shown at the average of their last iterates.
"""

from __future__ import annotations

import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import seaborn as sns

from dlnpipe import steppers
from dlnpipe.analysis import frame as analysis_frame
from dlnpipe.figures.common import (
    CI,
    N_BOOT,
    constant,
    empty,
    grid,
    legend,
    lr_palette,
    nothing,
    panels,
    plain_log,
    select,
)
from dlnpipe.status import Status

MINIMIZER_EXCESS = 0.05  # an averaged iterate is shown when R − R* <= 5% of yᵀy/n (= R* + a, ‖w*‖ = 1)


def _settings(ds, label) -> dict:
    return {name: ds[name].sel(optim=label).values for name in ("optimizer", "momentum", "beta1")}


def _threshold(ds, label, lr) -> float:
    s = _settings(ds, label)
    return float(steppers.get(str(s["optimizer"])).threshold(np.array([lr]), {k: [v] for k, v in s.items()})[0])


def optim_sharpness(ds):
    facets = panels(ds, exclude=("optim",))
    labels = [str(x) for x in ds.optim.values]
    fig, axes = grid(len(facets) * len(labels), width=4.6, height=3.4)
    pal = lr_palette(ds)
    for i, sel in enumerate(facets):
        s_min = constant(ds, "s_min", sel)
        for j, label in enumerate(labels):
            ax = axes[i * len(labels) + j]
            sub = select(ds, {**sel, "optim": label})
            extra = [v for v in ("sharpness_precond", "sharpness_avg", "loss_train_avg") if v in sub]
            every = sub[["sharpness", "status", *extra]].to_dataframe().reset_index()
            df = every[every.status == Status.CONVERGED]
            edge_on = steppers.get(str(ds.optimizer.sel(optim=label).values)).edge_on
            adam = edge_on != "sharpness"  # its threshold is on a preconditioned sharpness
            # stochastic runs that never settled, where the average of their last iterates is near a minimizer
            # (within 5% of the label variance): not those kicked to the saddle at the origin
            near = MINIMIZER_EXCESS * (constant(ds, "loss_opt", sel) + constant(ds, "a", sel))
            unsettled = ((every.status == Status.FAILED) & every.sharpness_avg.notna()
                         & (every.loss_train_avg - constant(ds, "loss_opt", sel) <= near)
                         if "sharpness_avg" in every else every.status < 0)
            if unsettled.any():  # stochastic runs that never settle: at the average of their last iterates
                avg = every[unsettled]
                sns.scatterplot(avg.assign(ratio=avg.sharpness_avg / s_min), x="scale", y="ratio", hue="lr",
                                palette=pal, marker="D", s=22, alpha=0.6, ax=ax, legend=False)
                ax.text(0.02, 0.03, "◆ not converged: average of the last iterates (near a minimizer)",
                        transform=ax.transAxes, fontsize=7)
            if len(df):
                sns.lineplot(df.assign(ratio=df.sharpness / s_min), x="scale", y="ratio", hue="lr", palette=pal,
                             errorbar=CI, n_boot=N_BOOT, seed=0, marker="o", ax=ax, legend=j == len(labels) - 1)
                if adam and df.sharpness_precond.notna().any():
                    sns.scatterplot(df.assign(ratio=df.sharpness_precond / s_min), x="scale", y="ratio", hue="lr",
                                    palette=pal, marker="X", s=40, ax=ax, legend=False)
            elif not unsettled.any():
                empty(ax, "no converged networks")
            for lr, color in pal.items():
                ax.axhline(_threshold(ds, label, lr) / s_min, ls="--", color=color, lw=1)
            ax.axhline(1.0, ls=":", color="k", lw=1.5)
            ax.set(yscale="log", xlabel="initialisation scale s", title=label,
                   ylabel="S / S_min" + ("  (×: λmax(P⁻¹H) / S_min)" if adam else ""))
            plain_log(ax)
            if j == len(labels) - 1:
                legend(ax, "η (dashed: threshold)")
    return fig


def optim_trajectories(ds):
    if "traj_sharpness" not in ds:
        return nothing("no sharpness trajectories (record_sharpness: false)")
    facets = panels(ds, exclude=("optim",))
    labels = [str(x) for x in ds.optim.values]
    fig, axes = grid(len(facets) * len(labels), width=4.6, height=3.4)
    pal = lr_palette(ds)
    for i, sel in enumerate(facets):
        for j, label in enumerate(labels):
            ax = axes[i * len(labels) + j]
            sub = select(ds, {**sel, "optim": label})
            names = ["traj_sharpness"] + (["traj_sharpness_precond"] if "traj_sharpness_precond" in sub
                                          and sub.traj_sharpness_precond.notnull().any() else [])
            for name, style in zip(names, ("-", ":")):
                da = sub[name]
                for lr in da.lr.values:
                    one = da.sel(lr=lr)
                    curve = one.median([d for d in one.dims if d != "step"])
                    ax.plot(curve.step, curve, ls=style, color=pal[float(lr)],
                            label=f"{lr:g}" + (" P⁻¹H" if name.endswith("precond") else ""))
                    ax.axhline(_threshold(ds, label, float(lr)), ls="--", color=pal[float(lr)], lw=1)
            ax.axhline(constant(ds, "s_min", sel), ls=":", color="k", lw=1.2, label="S_min")
            ax.set(yscale="log", xlabel="step", ylabel="sharpness (median over seeds)", title=label)
            plain_log(ax)
            legend(ax, "η (dashed: threshold)")
    return fig


def optim_batch(ds):
    df = analysis_frame(ds)
    df = df[df.batch_size.notna() & (df.status != Status.DIVERGED)].copy()  # gd and sgd: they have a batch size
    noisy = df.label_noise.fillna(0) > 0
    # runs that settle: their last iterate (converged ones); runs with label noise: their average iterate
    last = df[~noisy & (df.status == Status.CONVERGED)].assign(S=lambda f: f.sharpness, at="last iterate")
    avg = pd.DataFrame()
    if noisy.any() and "sharpness_avg" in df:
        avg = df[noisy]
        avg = avg.assign(S=avg.sharpness_avg, loss_test=avg.loss_test_avg, loss_train=avg.loss_train_avg,
                         at="average iterate")
    both = pd.concat([last, avg], ignore_index=True)
    fig, axes = grid(2, width=5.2, height=3.8)
    if both.empty:
        for ax in axes:
            empty(ax, "no converged gd/sgd networks")
        return fig
    both["gap"] = both.loss_test - both.loss_train
    both["label noise σ"] = both.label_noise.fillna(0).map(lambda v: f"{v:g}")
    for ax, y, ylabel, yscale in ((axes[0], "S", "sharpness S", "log"), (axes[1], "gap", "test − train loss",
                                                                            "linear")):
        sns.lineplot(both[np.isfinite(both[y])], x="batch_size", y=y, hue="label noise σ", style="lr", errorbar=CI,
                     n_boot=N_BOOT, seed=0, marker="o", ax=ax)
        ax.set(xscale="log", yscale=yscale, xlabel="batch size b (n: gradient descent)", ylabel=ylabel)
        sizes = sorted(both.batch_size.unique())
        ax.set_xticks(sizes, [f"{b:g}" for b in sizes])
        ax.xaxis.set_minor_formatter(mticker.NullFormatter())
        if yscale == "log":
            plain_log(ax)
        legend(ax, "label noise σ, η")
    axes[0].axhline(constant(ds, "s_min", {}), ls=":", color="k", lw=1.2)
    return fig
