"""The figures, by name: the one registry the config and the plot stage ask.

Each entry: name -> (module, drawing function, title), and its caption, ``captions/<name>.rst``: what
the figure shows, the text the workflow's report puts under it. A drawing function takes one
experiment's group of the cube (an ``xr.Dataset``) and returns a matplotlib Figure; a panel with
nothing to show says so. Adding a figure: its function in a module of this package, one entry below
and its caption file; the config's ``figures`` accept every name listed here. The modules
(matplotlib, seaborn) are imported only when a figure is drawn.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from dlnpipe._checks import check_choice

FIGURES = {
    "fig1a": ("paper", "fig1a", "distance to the optimal regressor"),
    "fig1b": ("paper", "fig1b", "sharpness after training"),
    "fig3": ("paper", "fig3", "divergence"),
    "trajectories": ("paper", "trajectories", "trajectories"),
    "fig2": ("paper", "fig2", "distance against learning rate"),
    "fig6a": ("paper", "fig6a", "sharpness (underdetermined)"),
    "fig6b": ("paper", "fig6b", "generalisation gap against sharpness"),
    "ratio_kappa": ("bounds", "ratio_kappa", "sharpness ratio against the condition number"),
    "ratio_depth": ("bounds", "ratio_depth", "sharpness ratio against depth"),
    "ratio_width": ("bounds", "ratio_width", "sharpness ratio against width"),
    "structure": ("bounds", "structure", "structure of the learned layers"),
    "topk": ("bounds", "topk", "top of the Hessian spectrum at the minimizer"),
    "density": ("hessian", "density", "spectral density of the Hessian, at init and after training"),
    "trace": ("hessian", "trace", "trace of the Hessian after training"),
    "trace_vs_sharpness": ("hessian", "trace_vs_sharpness", "sharpness against trace at the minimizer"),
    "optim_sharpness": ("optim", "optim_sharpness", "sharpness per optimizer against its threshold"),
    "optim_trajectories": ("optim", "optim_trajectories", "each optimizer at its own edge of stability"),
    "optim_batch": ("optim", "optim_batch", "sharpness and generalisation gap against batch size"),
    "eos_phi": ("eos", "eos_phi", "sharpness and the gradient-flow solution's sharpness along GD"),
    "eos_central": ("eos", "eos_central", "GD against its central flow"),
    "eos_balance": ("eos", "eos_balance", "balancing gaps"),
    "failures": ("eos", "failures", "how the networks ended"),
}
NAMES = tuple(FIGURES)


CAPTIONS = Path(__file__).parent / "captions"


def caption(name: str) -> str:
    """What figure ``name`` shows (reStructuredText)."""
    return (CAPTIONS / f"{check_choice('figure', name, NAMES)}.rst").read_text().strip()


def draw(ds, name: str):
    """The figure ``name`` of one experiment, in the house style, titled."""
    module, function, title = FIGURES[check_choice("figure", name, NAMES)]
    common = importlib.import_module("dlnpipe.figures.common")  # sets the Agg backend first
    common.style()
    fig = getattr(importlib.import_module(f"dlnpipe.figures.{module}"), function)(ds)
    common.mark_empty(fig, "no converged networks" if not common.any_converged(ds) else "no data to show")
    fig.suptitle(f"{ds.attrs.get('experiment', '')}: {title}", y=1.0)
    fig.tight_layout()
    return fig
