"""What every figure shares: the house style, panels per grid axis, legends, theory constants."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import xarray as xr  # noqa: E402

from dlnpipe.status import NO_NETWORK  # noqa: E402

FACETS = ("init", "depth", "width", "kappa", "spectrum", "wstar", "optim")
THEORY_DIMS = ("depth", "kappa", "spectrum", "wstar")  # what the theory constants depend on
CI = ("ci", 95)
N_BOOT = 500


def style():
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "axes.titlesize": 10, "legend.fontsize": 8})


def panels(ds: xr.Dataset, exclude=()):
    dims = [d for d in FACETS if d not in exclude and ds.sizes.get(d, 1) > 1]
    combos = list(itertools.product(*[ds[d].values for d in dims])) or [()]
    return [dict(zip(dims, c)) for c in combos]


def grid(n: int, *, width=5.4, height=3.6, cols: int = 3):
    """n panels, ``cols`` per row (at most n)."""
    cols = min(n, cols)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def title(sel: dict, ds: xr.Dataset) -> str:
    parts = [f"{k}={v:g}" if isinstance(v, (float, np.floating)) else f"{k}={v}" for k, v in sel.items()]
    return ", ".join(parts)


def legend(ax, title: str) -> None:
    """Legends sit outside the axes, right of the panel, so no curve hides behind them."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, title=title, fontsize=7, title_fontsize=8, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), frameon=False)


def select(ds: xr.Dataset, sel: dict) -> xr.Dataset:
    """The panel's slice, with the remaining single-valued grid axes dropped."""
    sub = ds.sel(sel)
    return sub.squeeze([d for d in FACETS if d in sub.dims and sub.sizes[d] == 1])


def frame(ds: xr.Dataset, var: str) -> pd.DataFrame:
    df = ds[[var, "status"]].to_dataframe().reset_index()
    return df[df.status != NO_NETWORK]


def lr_palette(ds: xr.Dataset):
    lrs = sorted(float(x) for x in ds.lr.values)
    return dict(zip(lrs, sns.color_palette("viridis", len(lrs))))


def constant(ds: xr.Dataset, var: str, sel: dict) -> float:
    """A theory constant (on depth and the dataset) for a panel."""
    da = ds[var]
    for d in THEORY_DIMS:
        if d in da.dims:
            da = da.sel({d: sel[d]}) if d in sel else da.isel({d: 0})
    return float(da)


def plain_log(ax, axis: str = "y") -> None:
    """Log axis with plain tick labels (2, 5, 10 rather than 2×10⁰)."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(mticker.FuncFormatter(
        lambda v, _: f"{v:g}" if f"{v:.1g}"[0] in "25" else ""))


def any_converged(ds: xr.Dataset) -> bool:
    from dlnpipe.status import Status

    return bool((ds.status == Status.CONVERGED).any())


def has_data(ax) -> bool:
    """Whether a panel shows data: a line in data coordinates (reference lines such as axhline are in
    axes coordinates along one axis), a scatter, a band or bars; or already says why it is empty."""
    if any(t.get_text() for t in ax.texts if t.get_transform() == ax.transAxes):
        return True
    for line in ax.lines:
        if line.get_transform() == ax.transData and np.isfinite(np.asarray(line.get_ydata(), float)).any():
            return True
    return any(len(c.get_offsets()) or len(c.get_paths()) for c in ax.collections) or bool(ax.patches)


def empty(ax, text: str) -> None:
    """A panel with nothing to draw says why, in its middle."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def nothing(text: str):
    """A figure of one panel that says why there is nothing to draw."""
    fig, axes = grid(1)
    empty(axes[0], text)
    return fig


def mark_empty(fig, text: str) -> None:
    """Every visible panel of ``fig`` with no data says so (instead of empty axes)."""
    for ax in fig.axes:
        if ax.get_visible() and ax.get_label() != "<colorbar>" and not has_data(ax):
            empty(ax, text)
