"""The cube, ``results/<study>/cube.zarr``: its schema, how one experiment's group is built from its cells, and
how the store is written and opened.

An xarray DataTree with one group per experiment. Each group is a Dataset whose dimension
coordinates are the grid axes ``init, depth, width, kappa, spectrum, wstar, optim, lr, scale, seed`` (plus ``step`` for
trajectories, ``eig`` for the top-k eigenvalues, ``layer`` for per-layer diagnostics, ``probe`` and ``node``
for the spectral density). Every variable, its dimensions, long name and units are listed once here
(:data:`VARIABLES`); ``docs/cube.md`` is generated from them. Ragged
axes (80 seeds for one η, 20 for the others) are NaN-padded; ``valid`` marks real networks and
``status`` is -1 there. The ``optim`` axis holds the experiment's optimizer settings, with each
one's options as coordinates along it (``optimizer``, ``momentum``, ``beta1``, ``beta2``, ``eps``,
``batch_size``, ``label_noise``). Units and long names are in each variable's attrs; the group's own
config (without its figure list) and devices in the group's attrs; the study's config, versions and git
revision in the root's. Each variable is declared once, in :data:`VARIABLES` (its dimensions, attributes,
source file, fill, optionality); :func:`cell_variables` reads it. Each group is written by its own job
(:func:`write_group`), the root by
another (:func:`write_root`).

Open it without dlnpipe:  ``xr.open_datatree("results/default/cube.zarr", engine="zarr", consolidated=False)``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from dlnpipe import archs, steppers
from dlnpipe.config import ExperimentConfig
from dlnpipe.data import Dataset
from dlnpipe.grid import Cell, data_points
from dlnpipe.io import replace_dir
from dlnpipe.status import NO_NETWORK, STATUS_MEANINGS, STATUS_VALUES, FailureKind, TrainPath
from dlnpipe.theory import bounds

GRID_DIMS = ("init", "depth", "width", "kappa", "spectrum", "wstar", "optim", "lr", "scale", "seed")
DATA_DIMS = ("kappa", "spectrum", "wstar")  # one dataset per combination
CONVENTIONS = ("Sigma = X^T X / n; R = (1/n)||y - X w||^2 (no 1/2); sharpness = largest algebraic Hessian "
               "eigenvalue")


@dataclass(frozen=True)
class Variable:
    """One variable of a group, declared once: its meaning and units, its dimensions, where a cell's value
    comes from, and what fills the padded grid.

    kind: ``network`` (the grid dims, then ``dims``), ``trajectory`` (the grid dims, ``step``, then ``dims``),
    ``per_depth`` (depth and the dataset dims), ``per_dataset`` (the dataset dims) or ``derived`` (computed
    from the others). source: the cell file a network variable is read from (``train``, ``measure``),
    under ``key`` (default: its own name), one ``column`` of it where given. optional: produced for some
    networks only (an optimizer's or a setting's own output): NaN for the others, absent where no cell
    has it. dtype and fill: an integer or boolean variable keeps its dtype, ``fill`` marks "no network";
    flags: its CF flag values and meanings."""

    long_name: str
    units: str = "1"
    kind: str = "network"
    dims: tuple[str, ...] = ()
    source: str = ""
    key: str = ""
    column: int | None = None
    optional: bool = False
    dtype: str | None = None
    fill: Any = np.nan
    flags: tuple[tuple[int, str], ...] = ()
    comment: str = ""

    def all_dims(self) -> tuple[str, ...]:
        if self.kind == "per_depth":
            return ("depth", *DATA_DIMS)
        if self.kind == "per_dataset":
            return DATA_DIMS
        return (*GRID_DIMS, *(("step",) if self.kind == "trajectory" else ()), *self.dims)

    def attrs(self) -> dict:
        """Its attributes: long name and units, or (CF flags, which have no units) its flags."""
        if not self.flags:
            return {"long_name": self.long_name, "units": self.units}
        return {"long_name": self.long_name, "flag_values": np.array([v for v, _ in self.flags], np.int8),
                "flag_meanings": " ".join(m for _, m in self.flags), **({"comment": self.comment} if self.comment
                                                                         else {})}


def _measured(long_name: str, units: str = "1", **kw) -> Variable:
    return Variable(long_name, units, source="measure", **kw)


def _trained(long_name: str, units: str = "1", **kw) -> Variable:
    return Variable(long_name, units, source="train", **kw)


_DENSITY: dict[str, Any] = dict(dims=("probe", "node"), optional=True)
VARIABLES: dict[str, Variable] = {
    "sharpness": _measured("largest algebraic Hessian eigenvalue at the end of training (Lanczos)",
                           key="sharpness_topk", column=0),
    "sharpness_topk": _measured("top-k algebraic Hessian eigenvalues at the end of training (Lanczos)", dims=("eig",)),
    "sharpness_residual": _measured("Lanczos certificate ||Hv - lambda v|| of each Ritz pair", dims=("eig",)),
    "sharpness_converged": _measured("whether Lanczos met its tolerance for the top-k eigenvalues at the end of "
                                     "training (false: it ran out of iterations, or no network / diverged)",
                                     dtype="bool", fill=False),
    "sharpness_exact": _measured("sharpness by the exact d×d formula at a minimizer "
                                 "(docs/theory.md#the-hessian-at-a-minimizer), converged linear networks only"),
    "sharpness_init": _measured("largest algebraic Hessian eigenvalue at initialisation (Lanczos)"),
    "hessian_trace": _measured("trace of the Hessian at the end of training (the config's trace_method)"),
    "hessian_trace_stderr": _measured("standard error of hessian_trace (Hutchinson; 0 when exact)"),
    "hessian_trace_init": _measured("trace of the Hessian at initialisation"),
    "hessian_trace_minimizer": _measured("trace by the closed form 2 tr(Sigma K) at a global minimizer, converged "
                                         "linear networks only"),
    "density_nodes": _measured("stochastic Lanczos quadrature nodes (Ritz values) at the end of training, per probe",
                               **_DENSITY),
    "density_weights": _measured("quadrature weights of density_nodes (each probe's sum to 1)", **_DENSITY),
    "density_nodes_init": _measured("stochastic Lanczos quadrature nodes at initialisation", **_DENSITY),
    "density_weights_init": _measured("quadrature weights of density_nodes_init", **_DENSITY),
    "sharpness_precond": _measured("adam: largest eigenvalue of P^-1 H at the end of training, P = diag(sqrt(v_hat) "
                                   "+ eps) the final preconditioner (Lanczos on P^-1/2 H P^-1/2); NaN for other "
                                   "optimizers", optional=True),
    "sharpness_avg": _measured("stochastic runs: Lanczos sharpness at the average of the last ceil(steps/10) "
                               "iterates; NaN for deterministic optimizers", optional=True),
    "loss_train_avg": _trained("stochastic runs: training loss at the average of the last iterates", optional=True),
    "loss_test_avg": _trained("stochastic runs: test loss at the average of the last iterates", optional=True),
    "distance_avg": _trained("stochastic runs: ||w_prod - w*||^2 at the average of the last iterates",
                             optional=True),
    "traj_sharpness_precond": _trained("adam: preconditioned sharpness (P^-1 H with the current P) along the "
                                       "trajectory", kind="trajectory", optional=True),
    "loss_train": _trained("final training loss R = (1/n)||y - X w||^2 (no factor 1/2)"),
    "loss_test": _trained("final test loss"),
    "distance": _trained("final squared distance ||w_prod - w*||^2 (the paper's figures plot it divided by d)"),
    "status": _trained("status at the end of training", dtype="int8", fill=NO_NETWORK,
                       flags=tuple(zip(STATUS_VALUES, STATUS_MEANINGS)),
                       comment=f"{NO_NETWORK}: no network at this grid point (ragged seed axis)"),
    "train_path": _trained("which code trained the network: torch's batched tensor operations or a compiled kernel "
                           "(dlnpipe.kernels)", dtype="int8", fill=NO_NETWORK,
                           flags=tuple((int(p), p.meaning) for p in TrainPath),
                           comment=f"{NO_NETWORK}: no network at this grid point"),
    "diverged_step": _trained("step at which the network diverged (-1: never, or no network)", "step",
                              dtype="int64", fill=-1),
    "steps": _trained("number of gradient steps of the network (-1: no network)", "step", dtype="int64", fill=-1),
    "seed_value": _trained("derived seed of the network, a hash of its grid coordinates (-1: no network)", key="seed",
                           dtype="int64", fill=-1),
    "sv_ratio": _measured("sigma_2 / sigma_1 of the layer's weight matrix (NaN for a vector layer)", dims=("layer",)),
    "alignment": _measured("|<v_{k+1}, u_k>|: top right singular vector of the next layer against this layer's top "
                           "left singular vector", dims=("layer",)),
    "lambda_min": _measured("smallest algebraic Hessian eigenvalue at the end of training (Lanczos on -H; clearly "
                            "negative near a saddle, docs/theory.md#the-edge-of-stability-measured)"),
    "grad_norm_sq": _measured("squared gradient norm ||grad R||^2 at the end of training"),
    "failure": _measured("how the network ended: its status, and for a failed one what holds it (unstable: its "
                         "optimizer's threshold exceeded; saddle: negative curvature and a small gradient; slow: "
                         "neither), docs/theory.md#the-edge-of-stability-measured", dtype="int8", fill=NO_NETWORK,
                         flags=tuple((int(k), k.meaning) for k in FailureKind),
                         comment=f"{NO_NETWORK}: no network at this grid point"),
    "balance": _measured("balancing gap ||W_{k+1}^T W_{k+1} - W_k W_k^T||_F at the end of training (k = layer; "
                         "conserved by gradient flow)", dims=("layer",)),
    "balance_init": _measured("balancing gap at initialisation", dims=("layer",)),
    "traj_gfs_sharpness": _trained("record_eos: sharpness of the gradient-flow solution from each sampled GD iterate "
                                   "(phi_t, docs/theory.md#the-gradient-flow-solution)", kind="trajectory",
                                   optional=True),
    "traj_balance": _trained("record_eos (gd) and the central flow: balancing gaps ||W_{k+1}^T W_{k+1} - W_k W_k^T||_F "
                             "along the trajectory (k = layer)", kind="trajectory", dims=("layer",), optional=True),
    "traj_central_sharpness": _trained("central flow: sharpness along the flow (docs/theory.md#the-central-flow)",
                                       kind="trajectory", optional=True),
    "traj_central_loss": _trained("central flow: predicted time-averaged GD loss R + <X, U^T H U> / 2",
                                  kind="trajectory", optional=True),
    "traj_central_trace_x": _trained("central flow: tr X, the correction's size (0: gradient flow)",
                                     kind="trajectory", optional=True),
    "traj_central_active": _trained("central flow: directions held at 2/eta (the rank of X)", kind="trajectory",
                                    optional=True),
    "input_alignment": _measured("|<v_1, w*/||w*||>|: first layer's top right singular vector against w*"),
    "traj_loss_train": _trained("training loss along the trajectory", kind="trajectory"),
    "traj_loss_test": _trained("test loss along the trajectory", kind="trajectory"),
    "traj_distance": _trained("||w_prod - w*||^2 along the trajectory", kind="trajectory"),
    "traj_sharpness": _trained("Lanczos sharpness along the trajectory", kind="trajectory", optional=True),
    "s_min": Variable("lower bound on the sharpness of any global minimizer, 2 L a ||w*||^(2-2/L)", kind="per_depth"),
    "s_upper": Variable("small-init gradient-flow bound 8 L Lambda ||w*||^(2-2/L)", kind="per_depth"),
    "s_balanced": Variable("exact sharpness of the balanced rank-one minimizer", kind="per_depth"),
    "eta_c": Variable("critical learning rate 2 / S_min", kind="per_depth"),
    "trace_min": Variable("smallest Hessian trace of any global minimizer, 2 L ||w*||^(2-2/L) tr(Sigma)^(1/L) "
                          "a^(1-1/L)", kind="per_depth"),
    "trace_balanced": Variable("Hessian trace of the balanced rank-one minimizer, 2 ||w*||^(2-2/L) (tr Sigma + (L-1) "
                               "a)", kind="per_depth"),
    "a": Variable("w*^T Sigma w* / ||w*||^2", kind="per_dataset"),
    "w_norm": Variable("||w*||, the minimum-norm least-squares solution's norm (1 for normalised data)",
                       kind="per_dataset"),
    "lam_max": Variable("largest eigenvalue Lambda of Sigma = X^T X / n", kind="per_dataset"),
    "lam_min": Variable("smallest non-zero eigenvalue of Sigma", kind="per_dataset"),
    "kappa_achieved": Variable("condition number of the dataset's Sigma (non-zero spectrum)", kind="per_dataset"),
    "loss_opt": Variable("optimal training loss R(w*)", kind="per_dataset"),
    "valid": Variable("true where a network exists at this grid point (ragged seed axes)", kind="derived"),
}
THEORY_PER_DEPTH = tuple(n for n, v in VARIABLES.items() if v.kind == "per_depth")
THEORY_PER_DATASET = tuple(n for n, v in VARIABLES.items() if v.kind == "per_dataset")

COORD_ATTRS = {
    "init": "architecture / initialisation (dlnpipe.archs: " + ", ".join(archs.NAMES) + ")",
    "depth": "number of trained layers L",
    "width": "hidden width m",
    "kappa": "condition number of Sigma (prescribed, or the achieved value for the paper's design)",
    "spectrum": "shape of Sigma's eigenvalue profile (gaussian: the paper's Gaussian design; file: user data)",
    "wstar": "direction of w* relative to Sigma's eigenvectors (top, bottom, random; gaussian / file: not set)",
    "optim": "optimizer setting (name:option=value,...; dlnpipe.steppers)",
    "optimizer": "optimizer of the setting (" + ", ".join(steppers.NAMES) + ")",
    **{name: text for option in steppers.OPTIONS.values() for name, text in option.coordinates.items()},
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


def dims_of(name: str) -> tuple[str, ...]:
    """The dimensions of a cube variable (:data:`VARIABLES`)."""
    return VARIABLES[name].all_dims()


def cell_variables(train: dict, measure: dict, steps: np.ndarray, layers: int, nodes: int) -> dict:
    """One cell's per-network arrays, as :data:`VARIABLES` declares them: trajectories reindexed to ``steps``,
    layers padded to ``layers``, quadrature nodes to ``nodes``; optional variables the cell lacks left out."""
    pos = np.searchsorted(steps, train["record_steps"])
    files = {"train": train, "measure": measure}
    out = {}
    for name, var in VARIABLES.items():
        if var.kind not in ("network", "trajectory"):
            continue
        arrays, key = files[var.source], var.key or name
        if var.optional and key not in arrays:
            continue
        a = np.asarray(arrays[key])
        if var.column is not None:
            a = a[:, var.column]
        if var.kind == "trajectory":
            a, raw = np.full((a.shape[0], steps.size, *a.shape[2:]), np.nan), a
            a[:, pos] = raw
        if var.dims[-1:] == ("layer",):
            a = _pad(a, layers)
        elif var.dims[-1:] == ("node",):
            a = _pad(a, nodes)
        out[name] = a.astype(var.dtype) if var.dtype else a
    return out


def grid_dataset(cells: list[tuple[Cell, float, dict, dict]]) -> xr.Dataset:
    """All networks of an experiment on the grid dims: one flat ``net`` axis, unstacked once.

    ``cells``: (cell, point, train arrays, measure arrays) with ``point`` mapping a data id to its
    (kappa, spectrum, wstar) coordinates."""
    steps = np.unique(np.concatenate([t["record_steps"] for _, _, t, _ in cells]))
    layers = max(c.depth for c, _, _, _ in cells)
    nodes = max((m["density_nodes"].shape[-1] for _, _, _, m in cells if "density_nodes" in m), default=0)
    per_cell = [cell_variables(t, m, steps, layers, nodes) for _, _, t, m in cells]
    names = list(dict.fromkeys(name for v in per_cell for name in v))
    for v, (_, _, t, _) in zip(per_cell, cells):  # a variable some cells lack (their optimizer has none): NaN
        for name in names:
            if name not in v:
                like = next(u[name] for u in per_cell if name in u)
                v[name] = np.full((len(t["lr"]), *like.shape[1:]), np.nan)
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
        probes = next(v["density_nodes"] for v in per_cell if "density_nodes" in v).shape[1]
        coords |= {"probe": np.arange(probes), "node": np.arange(nodes)}
    ds = xr.Dataset(data, coords=coords)
    ds = ds.assign_coords(xr.Coordinates.from_pandas_multiindex(index, "net"))
    return ds.unstack("net", fill_value={v: VARIABLES[v].fill for v in names})


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
    ds = ds.merge(theory(exp, datasets, point), join="left")
    ds = ds.assign_coords(optim_coords(exp, ds.optim.values, first_n=next(iter(datasets.values())).n))
    for var_name, var in VARIABLES.items():
        if var_name in ds:
            ds[var_name].attrs = var.attrs()
    for coord, text in COORD_ATTRS.items():
        if coord in ds.coords:
            ds[coord].attrs["long_name"] = text
    first = next(iter(datasets.values()))
    ds.attrs = {"experiment": name, "description": exp.description, "n_train": first.n, "d": first.d,
                "config": json.dumps(exp.model_dump(mode="json", exclude={"figures"}))}
    return ds


def optim_coords(exp: ExperimentConfig, labels, *, first_n: int) -> dict:
    """The settings of each point of the optim axis as coordinates along it: the optimizer's name and every
    option, with its default where the setting leaves it out, NaN where the optimizer has no such option."""
    names = {p.label: p.name for p in exp.optim_points()}
    cols = {"optimizer": np.array([names[str(label)] for label in labels]), **exp.optim_settings(labels, first_n)}
    return {name: ("optim", values) for name, values in cols.items()}


def theory(exp: ExperimentConfig, datasets: dict[str, Dataset], point: dict) -> xr.Dataset:
    """The theory's constants: per dataset (kappa, spectrum, wstar), the bounds also per depth."""
    per_data, per_depth = [], []
    for key, d in datasets.items():
        coords = dict(zip(DATA_DIMS, point[key]))
        per_data.append({**coords, **{v: d.kappa if v == "kappa_achieved" else getattr(d, v)
                                      for v in THEORY_PER_DATASET}})
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
