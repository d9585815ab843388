"""The edge of stability, predicted (docs/theory.md#the-gradient-flow-solution, #the-central-flow,
#the-edge-of-stability-measured).

``eos_phi``: along GD, the sharpness S_t (solid) and φ_t, the sharpness of the gradient-flow solution from each
iterate (dashed), one row per facet (depth, ... where they vary), one column per η, one colour per init scale
(every seed its own curve), with 2/η and S_min. ``eos_central``: GD's training loss and sharpness against the
central flow's prediction (its time-averaged loss R + ½⟨X, UᵀHU⟩ and its sharpness), a pair of rows per facet.
``eos_balance``: the relative change of the total balancing gap ‖G‖ = (Σ_k G_k²)^½ along GD (solid) and the
central flow (dashed), and gradient flow's at its end (×: it keeps them, zero). ``failures``: how the networks
ended, per optimizer and η (converged, diverged, and for failed ones: unstable, saddle, slow).
"""

from __future__ import annotations

import numpy as np
import seaborn as sns

from dlnpipe.analysis import frame as analysis_frame
from dlnpipe.figures.common import constant, empty, grid, legend, nothing, panels, select, title
from dlnpipe.status import FailureKind


def _labels(ds, optimizer: str) -> list[str]:
    """The optim labels of ``optimizer``'s settings."""
    if "optim" not in ds.dims:
        return []
    return [str(x) for x in ds.optim.values if str(ds.optimizer.sel(optim=x).values) == optimizer]


def _scale_palette(ds):
    scales = sorted(float(x) for x in ds.scale.values)
    return dict(zip(scales, sns.color_palette("flare", len(scales))))


def _curves(da):
    """(scale, curve over step) for every network of ``da`` (each seed its own curve: with a few seeds a median
    would draw a network that does not exist)."""
    for s in da.scale.values:
        one = da.sel(scale=s)
        rest = [d for d in one.dims if d != "step"]
        flat = one.stack(net=rest) if rest else one.expand_dims(net=[0])
        for k in range(flat.sizes["net"]):
            curve = flat.isel(net=k)
            if bool(curve.notnull().any()):
                yield float(s), curve


def _title(ds, sel: dict, lr: float) -> str:
    """A panel's title: its facet (depth, ... where they vary) and η."""
    return ", ".join(filter(None, [title(sel, ds), f"η = {lr:g}"]))


def _top(edge: float, da) -> float:
    """The top of a sharpness axis: above 2/η and most curves (the 90th percentile of their samples: one very
    sharp start would flatten the rest)."""
    values = da.values[np.isfinite(da.values)]
    return 1.3 * max(edge, float(np.percentile(values, 90)) if values.size else 0.0)


def eos_phi(ds):
    gd = _labels(ds, "gd")
    if not gd or "traj_gfs_sharpness" not in ds or "traj_sharpness" not in ds:
        return nothing("no φ trajectories (record_sharpness and record_eos, optimizer gd)")
    lrs = [float(x) for x in ds.lr.values]
    facets = panels(ds, exclude=("optim",))
    fig, axes = grid(len(facets) * len(lrs), width=4.8, height=3.6, cols=len(lrs))
    pal = _scale_palette(ds)
    for i, sel in enumerate(facets):
        s_min = constant(ds, "s_min", sel)
        for j, lr in enumerate(lrs):
            ax = axes[i * len(lrs) + j]
            sub = select(ds, {**sel, "optim": gd[0], "lr": lr})
            seen = set()
            for (s, S), (_, phi) in zip(_curves(sub.traj_sharpness), _curves(sub.traj_gfs_sharpness)):
                ax.plot(S.step, S, color=pal[s], lw=0.9, alpha=0.8, label=None if s in seen else f"{s:g}")
                ax.plot(phi.step, phi, color=pal[s], lw=2.0, ls="--")
                seen.add(s)
            ax.axhline(2 / lr, color="k", ls="--", lw=1, label="2/η")
            ax.axhline(s_min, color="k", ls=":", lw=1.2, label="S_min")
            ax.set(ylim=(0, _top(2 / lr, sub.traj_gfs_sharpness)), xlabel="step", ylabel="S_t (solid), φ_t (dashed)",
                   title=_title(ds, sel, lr))
            legend(ax, "init scale s")
    return fig


def eos_central(ds):
    gd, central = _labels(ds, "gd"), _labels(ds, "central")
    if not gd or not central or "traj_central_loss" not in ds:
        return nothing("no central flow beside GD (optimizer: [gd, central])")
    lrs = [float(x) for x in ds.lr.values]
    facets = panels(ds, exclude=("optim",))
    fig, axes = grid(2 * len(facets) * len(lrs), width=4.8, height=3.4, cols=len(lrs))
    pal = _scale_palette(ds)
    for i, sel in enumerate(facets):
        loss_opt = constant(ds, "loss_opt", sel)
        for j, lr in enumerate(lrs):
            g, c = select(ds, {**sel, "optim": gd[0], "lr": lr}), select(ds, {**sel, "optim": central[0], "lr": lr})
            top, bottom = axes[2 * i * len(lrs) + j], axes[(2 * i + 1) * len(lrs) + j]
            seen = set()
            for (s, loss), (_, pred) in zip(_curves(g.traj_loss_train - loss_opt),
                                            _curves(c.traj_central_loss - loss_opt)):
                top.plot(loss.step, loss, color=pal[s], lw=0.9, alpha=0.8, label=None if s in seen else f"{s:g}")
                top.plot(pred.step, pred, color=pal[s], lw=1.8, ls="--")
                seen.add(s)
            top.set(yscale="log", xlabel="step", ylabel="R − R* (GD solid; central flow's\ntime average dashed)",
                    title=_title(ds, sel, lr))
            legend(top, "init scale s")
            if "traj_sharpness" in g:
                for (s, S), (_, Sc) in zip(_curves(g.traj_sharpness), _curves(c.traj_central_sharpness)):
                    bottom.plot(S.step, S, color=pal[s], lw=0.9, alpha=0.8)
                    bottom.plot(Sc.step, Sc, color=pal[s], lw=1.8, ls="--")
            bottom.axhline(2 / lr, color="k", ls="--", lw=1)
            bottom.axhline(constant(ds, "s_min", sel), color="k", ls=":", lw=1.2)
            bottom.set(ylim=(0, _top(2 / lr, c.traj_central_sharpness)), xlabel="step",
                       ylabel="sharpness (GD solid, central dashed)")
    return fig


def _total_gap(da):
    """‖G‖ = (Σ_k G_k²)^½ over the layer axis (NaN where no gap is recorded)."""
    return np.sqrt((da**2).sum("layer", min_count=1))


def eos_balance(ds):
    if "traj_balance" not in ds:
        return nothing("no balancing gaps along trajectories (record_eos, or the central flow)")
    lrs = [float(x) for x in ds.lr.values]
    facets = panels(ds, exclude=("optim",))
    fig, axes = grid(len(facets) * len(lrs), width=4.8, height=3.6, cols=len(lrs))
    pal = _scale_palette(ds)
    end = float(ds.step.max())
    for i, sel in enumerate(facets):
        for j, lr in enumerate(lrs):
            ax = axes[i * len(lrs) + j]
            seen = set()
            for optimizer, ls in (("gd", "-"), ("central", "--")):
                for label in _labels(ds, optimizer):
                    G = _total_gap(select(ds, {**sel, "optim": label, "lr": lr}).traj_balance)
                    for s, curve in _curves(G / G.isel(step=0) - 1):
                        ax.plot(curve.step, curve, color=pal[s], lw=0.9 if ls == "-" else 1.8, ls=ls, alpha=0.85,
                                label=None if s in seen else f"{s:g}")
                        seen.add(s)
            for label in _labels(ds, "flow"):  # gradient flow: its end against its start (it keeps them)
                sub = select(ds, {**sel, "optim": label, "lr": lr})
                rel = (_total_gap(sub.balance) / _total_gap(sub.balance_init) - 1).stack(net=[
                    d for d in ("scale", "seed") if d in sub.dims])
                for s, r in zip(rel.scale.values, rel.values):
                    if np.isfinite(r):
                        ax.plot([end], [r], marker="x", color=pal[float(s)], ls="none", ms=7)
            ax.axhline(0, color="k", lw=0.8, ls=":")
            ax.set(xlabel="step", ylabel="‖G(t)‖ / ‖G(0)‖ − 1",
                   title=f"{_title(ds, sel, lr)}: GD solid, central flow\ndashed, gradient flow at its end ×")
            legend(ax, "init scale s")
    return fig


def failures(ds):
    df = analysis_frame(ds)
    fig, axes = grid(1, width=6.4, height=3.8)
    ax = axes[0]
    if df.empty or "failure" not in df:
        empty(ax, "no networks")
        return fig
    df["kind"] = df.failure.map(lambda k: FailureKind(int(k)).meaning)
    counts = df.groupby(["optim", "lr", "kind"]).size().unstack("kind", fill_value=0)
    order = [k.meaning for k in FailureKind if k.meaning in counts]
    counts = counts[order]
    labels = [f"{o}, η={lr:g}" for o, lr in counts.index]
    bottom = np.zeros(len(counts))
    colors = dict(zip([k.meaning for k in FailureKind], sns.color_palette("Set2", len(FailureKind))))
    for kind in order:
        ax.bar(labels, counts[kind], bottom=bottom, label=kind, color=colors[kind])
        bottom += counts[kind].to_numpy()
    ax.set(ylabel="networks", title="how the networks ended")
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    legend(ax, "end")
    return fig
