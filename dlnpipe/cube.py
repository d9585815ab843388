"""The cube, ``results/<study>/cube.zarr``: its schema, how one experiment's group is built from its cells, and
how the store is written and opened.

An xarray DataTree with one group per experiment. Each group is a Dataset whose dimension
coordinates are the grid axes ``init, depth, width, kappa, spectrum, wstar, optim, lr, scale, seed`` (plus ``step`` for
trajectories, ``eig`` for the top-k eigenvalues, ``layer`` for per-layer diagnostics, ``probe`` and ``node``
for the spectral density). Every variable, its dimensions, long name and units are listed once here
(:data:`ATTRS`, :func:`dims_of`); ``docs/cube.md`` is generated from them. Ragged
axes (80 seeds for one η, 20 for the others) are NaN-padded; ``valid`` marks real networks and
``status`` is -1 there. The ``optim`` axis holds the experiment's optimizer settings, with each
one's options as coordinates along it (``optimizer``, ``momentum``, ``beta1``, ``beta2``, ``eps``,
``batch_size``, ``label_noise``). Units and long names are in each variable's attrs; the group's own
config (without its figure list) and devices in the group's attrs; the study's config, versions and git
revision in the root's. Each group is written by its own job (:func:`write_group`), the root by
another (:func:`write_root`).

Open it without dlnpipe:  ``xr.open_datatree("results/default/cube.zarr", engine="zarr", consolidated=False)``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from dlnpipe import archs
from dlnpipe.config import ExperimentConfig
from dlnpipe.data import Dataset
from dlnpipe.grid import Cell, data_points
from dlnpipe.io import replace_dir
from dlnpipe.status import NO_NETWORK, STATUS_MEANINGS, STATUS_VALUES
from dlnpipe.theory import bounds

GRID_DIMS = ("init", "depth", "width", "kappa", "spectrum", "wstar", "optim", "lr", "scale", "seed")
DATA_DIMS = ("kappa", "spectrum", "wstar")  # one dataset per combination
THEORY_PER_DEPTH = ("s_min", "s_upper", "s_balanced", "eta_c", "trace_min", "trace_balanced")
THEORY_PER_DATASET = ("a", "lam_max", "lam_min", "kappa_achieved", "loss_opt")
# Integer variables keep their dtype on the padded grid: -1 marks "no network here", NaN elsewhere.
INT_FILL = {"status": NO_NETWORK, "diverged_step": -1, "steps": -1, "seed_value": -1}
CONVENTIONS = ("Sigma = X^T X / n; R = (1/n)||y - X w||^2 (no 1/2); sharpness = largest algebraic Hessian "
               "eigenvalue")

ATTRS = {
    "sharpness": ("largest algebraic Hessian eigenvalue at the end of training (Lanczos)", "1"),
    "sharpness_topk": ("top-k algebraic Hessian eigenvalues at the end of training (Lanczos)", "1"),
    "sharpness_residual": ("Lanczos certificate ||Hv - lambda v|| of each Ritz pair", "1"),
    "sharpness_exact": ("sharpness by the exact d×d formula at a minimizer "
                        "(docs/theory.md#the-hessian-at-a-minimizer), converged linear networks only", "1"),
    "sharpness_init": ("largest algebraic Hessian eigenvalue at initialisation (Lanczos)", "1"),
    "hessian_trace": ("trace of the Hessian at the end of training (the config's trace_method)", "1"),
    "hessian_trace_stderr": ("standard error of hessian_trace (Hutchinson; 0 when exact)", "1"),
    "hessian_trace_init": ("trace of the Hessian at initialisation", "1"),
    "hessian_trace_minimizer": ("trace by the closed form 2 tr(Sigma K) at a global minimizer, converged linear "
                                "networks only", "1"),
    "density_nodes": ("stochastic Lanczos quadrature nodes (Ritz values) at the end of training, per probe", "1"),
    "density_weights": ("quadrature weights of density_nodes (each probe's sum to 1)", "1"),
    "density_nodes_init": ("stochastic Lanczos quadrature nodes at initialisation", "1"),
    "density_weights_init": ("quadrature weights of density_nodes_init", "1"),
    "sharpness_precond": ("adam: largest eigenvalue of P^-1 H at the end of training, P = diag(sqrt(v_hat) + eps) "
                          "the final preconditioner (Lanczos on P^-1/2 H P^-1/2); NaN for other optimizers", "1"),
    "sharpness_avg": ("stochastic runs: Lanczos sharpness at the average of the last ceil(steps/10) iterates; NaN "
                      "for deterministic optimizers", "1"),
    "loss_train_avg": ("stochastic runs: training loss at the average of the last iterates", "1"),
    "loss_test_avg": ("stochastic runs: test loss at the average of the last iterates", "1"),
    "distance_avg": ("stochastic runs: ||w_prod - w*||^2 at the average of the last iterates", "1"),
    "traj_sharpness_precond": ("adam: preconditioned sharpness (P^-1 H with the current P) along the trajectory",
                               "1"),
    "loss_train": ("final training loss R = (1/n)||y - X w||^2 (no factor 1/2)", "1"),
    "loss_test": ("final test loss", "1"),
    "distance": ("final squared distance ||w_prod - w*||^2 (the paper's figures plot it divided by d)", "1"),
    "diverged_step": ("step at which the network diverged (-1: never, or no network)", "step"),
    "steps": ("number of gradient steps of the network (-1: no network)", "step"),
    "seed_value": ("derived seed of the network, a hash of its grid coordinates (-1: no network)", "1"),
    "sv_ratio": ("sigma_2 / sigma_1 of the layer's weight matrix (NaN for a vector layer)", "1"),
    "alignment": ("|<v_{k+1}, u_k>|: top right singular vector of the next layer against this layer's top "
                  "left singular vector", "1"),
    "input_alignment": ("|<v_1, w*/||w*||>|: first layer's top right singular vector against w*", "1"),
    "traj_loss_train": ("training loss along the trajectory", "1"),
    "traj_loss_test": ("test loss along the trajectory", "1"),
    "traj_distance": ("||w_prod - w*||^2 along the trajectory", "1"),
    "traj_sharpness": ("Lanczos sharpness along the trajectory", "1"),
    "s_min": ("lower bound on the sharpness of any global minimizer, 2 L a ||w*||^(2-2/L)", "1"),
    "s_upper": ("small-init gradient-flow bound 8 L Lambda ||w*||^(2-2/L)", "1"),
    "s_balanced": ("exact sharpness of the balanced rank-one minimizer", "1"),
    "eta_c": ("critical learning rate 2 / S_min", "1"),
    "trace_min": ("smallest Hessian trace of any global minimizer, 2 L ||w*||^(2-2/L) tr(Sigma)^(1/L) a^(1-1/L)", "1"),
    "trace_balanced": ("Hessian trace of the balanced rank-one minimizer, 2 ||w*||^(2-2/L) (tr Sigma + (L-1) a)",
                       "1"),
    "a": ("w*^T Sigma w* / ||w*||^2", "1"),
    "w_norm": ("||w*||, the minimum-norm least-squares solution's norm (1 for normalised data)", "1"),
    "lam_max": ("largest eigenvalue Lambda of Sigma = X^T X / n", "1"),
    "lam_min": ("smallest non-zero eigenvalue of Sigma", "1"),
    "kappa_achieved": ("condition number of the dataset's Sigma (non-zero spectrum)", "1"),
    "loss_opt": ("optimal training loss R(w*)", "1"),
    "valid": ("true where a network exists at this grid point (ragged seed axes)", "1"),
}

COORD_ATTRS = {
    "init": "architecture / initialisation (dlnpipe.archs: " + ", ".join(archs.NAMES) + ")",
    "depth": "number of trained layers L",
    "width": "hidden width m",
    "kappa": "condition number of Sigma (prescribed, or the achieved value for the paper's design)",
    "spectrum": "shape of Sigma's eigenvalue profile (gaussian: the paper's Gaussian design; file: user data)",
    "wstar": "direction of w* relative to Sigma's eigenvectors (top, bottom, random; gaussian / file: not set)",
    "optim": "optimizer setting (name:option=value,...; dlnpipe.steppers)",
    "optimizer": "optimizer of the setting (gd, flow, heavy_ball, adam, sgd)",
    "momentum": "heavy_ball: momentum beta (NaN: not this optimizer)",
    "beta1": "adam: beta1 (NaN: not this optimizer)",
    "beta2": "adam: beta2 (NaN: not this optimizer)",
    "eps": "adam: epsilon (NaN: not this optimizer)",
    "batch_size": "gd and sgd: samples per step (n: full batch; NaN: not these optimizers)",
    "label_noise": "gd and sgd: standard deviation of the label noise (NaN: not these optimizers)",
    "lr": "learning rate eta",
    "scale": "initialisation scale s",
    "seed": "seed index within the grid point",
    "step": "gradient step",
    "eig": "rank of the Hessian eigenvalue (0 = largest)",
    "layer": "layer index k (W_k, 1-based)",
    "probe": "start vector of the stochastic Lanczos quadrature",
    "node": "quadrature node (Lanczos step)",
}


def _pad(a: np.ndarray, size: int, fill=np.nan) -> np.ndarray:
    """Pad the last axis of ``a`` to ``size``."""
    out = np.full(a.shape[:-1] + (size,), fill, dtype=np.result_type(a.dtype, np.float64))
    out[..., : a.shape[-1]] = a
    return out


DENSITY = ("density_nodes", "density_weights", "density_nodes_init", "density_weights_init")
# what only some optimizers produce (NaN for the networks of the others)
OPTIONAL = ("sharpness_precond", "sharpness_avg", "loss_train_avg", "loss_test_avg", "distance_avg")
OPTIONAL_TRAJ = ("traj_sharpness", "traj_sharpness_precond")
EXTRA_DIMS = {"sharpness_topk": ("eig",), "sharpness_residual": ("eig",), "sv_ratio": ("layer",),
              "alignment": ("layer",), **{name: ("probe", "node") for name in DENSITY}}


def dims_of(name: str) -> tuple[str, ...]:
    """The dimensions of a cube variable: the grid axes and its own (per-network variables), or the
    dataset axes (and depth) for the theory's constants."""
    if name in THEORY_PER_DEPTH:
        return ("depth", *DATA_DIMS)
    if name in THEORY_PER_DATASET:
        return DATA_DIMS
    return (*GRID_DIMS, *(("step",) if name.startswith("traj_") else EXTRA_DIMS.get(name, ())))


def cell_variables(cell: Cell, train: dict, measure: dict, steps: np.ndarray, layers: int, nodes: int) -> dict:
    """One cell's per-network arrays, trajectories reindexed to ``steps``, layers padded to ``layers``,
    quadrature nodes to ``nodes``."""
    B = len(train["lr"])
    pos = np.searchsorted(steps, train["record_steps"])

    def traj(a):
        out = np.full((B, steps.size), np.nan)
        out[:, pos] = a
        return out

    align = measure["alignment"] if cell.depth > 1 else np.zeros((B, 0))
    out = {
        "sharpness": measure["sharpness_topk"][:, 0],
        "sharpness_topk": measure["sharpness_topk"],
        "sharpness_residual": measure["sharpness_residual"],
        "sharpness_exact": measure["sharpness_exact"],
        "sharpness_init": measure["sharpness_init"],
        "hessian_trace": measure["hessian_trace"],
        "hessian_trace_stderr": measure["hessian_trace_stderr"],
        "hessian_trace_init": measure["hessian_trace_init"],
        "hessian_trace_minimizer": measure["hessian_trace_minimizer"],
        "loss_train": train["loss_train"],
        "loss_test": train["loss_test"],
        "distance": train["distance"],
        "status": train["status"].astype(np.int8),
        "diverged_step": train["diverged_step"].astype(np.int64),
        "steps": train["steps"].astype(np.int64),
        "seed_value": train["seed"].astype(np.int64),
        "sv_ratio": _pad(measure["sv_ratio"], layers),
        "alignment": _pad(align, layers),
        "input_alignment": measure["input_alignment"],
        "traj_loss_train": traj(train["traj_loss_train"]),
        "traj_loss_test": traj(train["traj_loss_test"]),
        "traj_distance": traj(train["traj_distance"]),
    }
    for name in OPTIONAL_TRAJ:
        if name in train:
            out[name] = traj(train[name])
    for name in OPTIONAL:
        if name in train or name in measure:
            out[name] = (train if name in train else measure)[name]
    for name in DENSITY:
        if name in measure:
            out[name] = _pad(measure[name], nodes)
    return out


def grid_dataset(cells: list[tuple[Cell, float, dict, dict]]) -> xr.Dataset:
    """All networks of an experiment on the grid dims: one flat ``net`` axis, unstacked once.

    ``cells``: (cell, point, train arrays, measure arrays) with ``point`` mapping a data id to its
    (kappa, spectrum, wstar) coordinates."""
    steps = np.unique(np.concatenate([t["record_steps"] for _, _, t, _ in cells]))
    layers = max(c.depth for c, _, _, _ in cells)
    nodes = max((m[DENSITY[0]].shape[-1] for _, _, _, m in cells if DENSITY[0] in m), default=0)
    per_cell = [cell_variables(c, t, m, steps, layers, nodes) for c, _, t, m in cells]
    names = list(dict.fromkeys(name for v in per_cell for name in v))
    for v, (_, _, t, _) in zip(per_cell, cells):  # a variable some cells lack (their optimizer has none): NaN
        for name in set(OPTIONAL) | set(OPTIONAL_TRAJ):
            if name in names and name not in v:
                v[name] = np.full((len(t["lr"]), steps.size) if name.startswith("traj_") else len(t["lr"]), np.nan)
    columns = [[] for _ in GRID_DIMS]
    for cell, point, train, _ in cells:
        B = len(train["lr"])
        data = train["data"]  # each network's data id
        kappa, spectrum, wstar = zip(*(point[k] for k in data))
        for col, values in zip(columns, ([cell.init] * B, [cell.depth] * B, [cell.width] * B, kappa, spectrum,
                                         wstar, train["optim"], train["lr"], train["scale"], train["seed_index"])):
            col.extend(values)
    index = pd.MultiIndex.from_arrays(columns, names=GRID_DIMS)
    data = {}
    for name in names:
        value = np.concatenate([v[name] for v in per_cell])
        data[name] = (("net", *dims_of(name)[len(GRID_DIMS):]), value)
    k = per_cell[0]["sharpness_topk"].shape[1]
    coords = {"step": steps, "eig": np.arange(k), "layer": np.arange(1, layers + 1)}
    if nodes:
        coords |= {"probe": np.arange(per_cell[0][DENSITY[0]].shape[1]), "node": np.arange(nodes)}
    ds = xr.Dataset(data, coords=coords)
    ds = ds.assign_coords(xr.Coordinates.from_pandas_multiindex(index, "net"))
    return ds.unstack("net", fill_value={**{v: np.nan for v in names}, **INT_FILL})


def experiment_dataset(name: str, exp: ExperimentConfig, cells: list[tuple[Cell, dict, dict]],
                       datasets: dict[str, Dataset]) -> xr.Dataset:
    """One experiment's group: ``cells`` holds (cell, train arrays, measure arrays), ``datasets`` the
    experiment's datasets by data id."""

    def kappa_of(data_key: str) -> float:
        k = datasets[data_key].meta.get("kappa_target")
        return float(k) if k is not None else float(datasets[data_key].kappa)

    point = {key: (kappa_of(key), spectrum, wstar) for key, _, spectrum, wstar in data_points(exp)
             if key in datasets}
    loaded = [(cell, point, train, measure) for cell, train, measure in sorted(cells, key=lambda c: c[0].id)]
    ds = grid_dataset(loaded).transpose(*GRID_DIMS, ...)
    present = set(ds.optim.values.tolist())
    ds = ds.reindex(optim=[p.label for p in exp.optim_points() if p.label in present])  # the config's order
    ds["valid"] = ds["status"] != NO_NETWORK
    ds["status"].attrs = {"long_name": "status at the end of training",
                          "flag_values": np.array(STATUS_VALUES, np.int8), "flag_meanings": " ".join(STATUS_MEANINGS),
                          "comment": f"{NO_NETWORK}: no network at this grid point (ragged seed axis)"}
    ds = ds.merge(theory(exp, datasets, point), join="left")
    ds = ds.assign_coords(optim_coords(exp, ds.optim.values, first_n=next(iter(datasets.values())).n))
    for var, (long_name, units) in ATTRS.items():
        if var in ds:
            ds[var].attrs.update({"long_name": long_name, "units": units})
    for coord, text in COORD_ATTRS.items():
        if coord in ds.coords:
            ds[coord].attrs["long_name"] = text
    first = next(iter(datasets.values()))
    ds.attrs = {"experiment": name, "description": exp.description, "n_train": first.n, "d": first.d,
                "config": json.dumps(exp.model_dump(mode="json", exclude={"figures"}))}
    return ds


OPTIM_COORDS = ("optimizer", "momentum", "beta1", "beta2", "eps", "batch_size", "label_noise")


def optim_coords(exp: ExperimentConfig, labels, *, first_n: int) -> dict:
    """The settings of each point of the optim axis as coordinates along it: the optimizer's name and every
    option, with its default where the setting leaves it out, NaN where the optimizer has no such option."""
    by_label = {p.label: p for p in exp.optim_points()}
    cols = {name: [] for name in OPTIM_COORDS}
    for label in labels:
        point = by_label[str(label)]
        given = point.resolved(first_n)
        cols["optimizer"].append(point.name)
        for name in OPTIM_COORDS[1:]:
            cols[name].append(float(given.get(name, np.nan)))
    return {name: ("optim", np.array(values)) for name, values in cols.items()}


def theory(exp: ExperimentConfig, datasets: dict[str, Dataset], point: dict) -> xr.Dataset:
    """The theory's constants: per dataset (kappa, spectrum, wstar), the bounds also per depth."""
    per_data, per_depth = [], []
    for key, d in datasets.items():
        coords = dict(zip(DATA_DIMS, point[key]))
        per_data.append({**coords, "a": d.a, "lam_max": d.lam_max, "lam_min": d.lam_min, "kappa_achieved": d.kappa,
                         "loss_opt": d.loss_opt, "w_norm": d.w_norm})
        for L in exp.depths:
            b = bounds(d, L)
            per_depth.append({**coords, "depth": L, **{v: getattr(b, v) for v in THEORY_PER_DEPTH}})
    return xr.merge([pd.DataFrame(per_data).set_index(list(DATA_DIMS)).to_xarray(),
                     pd.DataFrame(per_depth).set_index(["depth", *DATA_DIMS]).to_xarray()])


def write_group(ds: xr.Dataset, out: str | Path) -> None:
    """One experiment's group (``results/<study>/cube.zarr/<exp>``), a Zarr group of its own written by its own
    job, atomically: into a temporary directory beside it, then moved into place. No other job writes
    inside it; a killed job leaves the previous group (or none), never a partial one."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    ds.to_zarr(tmp / "group.zarr", mode="w", consolidated=False)
    replace_dir(tmp / "group.zarr", out)
    tmp.rmdir()


def write_root(attrs: dict, cube: str | Path, *, groups: list[str]) -> Path:
    """The store's root (``results/<study>/cube.zarr/zarr.json``: a group holding the study's attrs), written
    atomically; directories of experiments no longer in the study (not in ``groups``) are removed, so
    the tree holds exactly the study's groups. The groups themselves are their own jobs' outputs."""
    import zarr

    cube = Path(cube)
    cube.mkdir(parents=True, exist_ok=True)
    for child in cube.iterdir():
        if child.is_dir() and not child.name.startswith(".") and child.name not in groups:
            shutil.rmtree(child)
    tmp = Path(tempfile.mkdtemp(dir=cube, prefix=".root."))
    zarr.open_group(store=str(tmp), mode="w", zarr_format=3,
                    attributes={"title": "dlnpipe study cube", **attrs, "conventions": CONVENTIONS})
    os.replace(tmp / "zarr.json", cube / "zarr.json")
    shutil.rmtree(tmp)
    return cube / "zarr.json"


def open_cube(path: str | Path) -> xr.DataTree:
    """The whole cube as a DataTree (what a user opens)."""
    return xr.open_datatree(path, engine="zarr", consolidated=False)


def open_group(path: str | Path, experiment: str) -> xr.Dataset:
    """One experiment's group, read on its own (a stage that needs one group does not depend on the root)."""
    return xr.open_dataset(Path(path) / experiment, engine="zarr", consolidated=False)
