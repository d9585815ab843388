"""The study's files, one per job (npz with a JSON ``meta``, written atomically by :mod:`dlnpipe.io`):

* a **dataset** (``results/<study>/data/<exp>/<data>.npz``): X, y, X_test, y_test, already normalised
  (‖w*‖ = 1), and in meta its experiment, data id and constants;
* a **trained cell** (``results/<study>/train/<exp>/<cell>.npz``): each network's grid coordinates (lr, scale,
  seed_index, seed, steps, data id, optim label), its final weights W0..W{L−1} (and p), status, losses,
  distance, divergence step and trajectories, and its optimizer's own outputs (stochastic runs: the
  averaged iterates avg_W0.. and their losses; Adam: its final preconditioner ``precond``), and which code
  trained it (``train_path``, :class:`dlnpipe.status.TrainPath`); meta: the job spec, device and dtype;
* a **measured cell** (``results/<study>/measure/<exp>/<cell>.npz``): the Hessian measurements of the same networks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dlnpipe.data import Dataset, dataset_from_arrays
from dlnpipe.grid import NETWORK_FIELDS
from dlnpipe.io import load_npz, save_npz
from dlnpipe.networks import Weights
from dlnpipe.result import TrainResult


def write_dataset(path: str | Path, ds: Dataset, *, experiment: str, data_id: str) -> None:
    meta = {**ds.meta, "experiment": experiment, "data_id": data_id, "kappa": ds.kappa, "a": ds.a,
            "lam_max": ds.lam_max, "lam_min": ds.lam_min, "loss_opt": ds.loss_opt}
    save_npz(path, meta=meta, X=ds.X, y=ds.y, X_test=ds.X_test, y_test=ds.y_test)


def read_dataset(path: str | Path) -> Dataset:
    """A dataset written by :func:`write_dataset` (already normalised: no second rescaling)."""
    arrays, meta = load_npz(path)
    return dataset_from_arrays(arrays["X"], arrays["y"], arrays["X_test"], arrays["y_test"], rescale=False,
                               meta=meta, name=str(path))


def read_datasets(paths) -> dict[str, Dataset]:
    """Datasets written by :func:`write_dataset`, by their data id (a cell may use several)."""
    out = {}
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        ds = read_dataset(path)
        if not ds.meta.get("data_id"):
            raise ValueError(f"{path}: a dataset file without a data id in its meta (write it with "
                             "dlnpipe.files.write_dataset, which names it)")
        out[ds.meta["data_id"]] = ds
    return out


def per_network(sets: dict[str, Dataset], data: np.ndarray, cell_id: str = "") -> list[Dataset]:
    """The dataset of every network (train() batches networks that share one as a single dataset).
    A single file serves a single-dataset cell whatever its id (e.g. one written by hand)."""
    if len(sets) == 1 and len(set(data)) == 1:
        return [next(iter(sets.values()))] * len(data)
    missing = sorted(set(data) - set(sets))
    if missing:
        raise ValueError(f"cell {cell_id}: no data file for dataset(s) {missing} among {sorted(sets)}")
    return [sets[k] for k in data]


def write_train(path: str | Path, res: TrainResult, grid: dict[str, np.ndarray], *, meta: dict) -> None:
    """A trained cell: ``grid`` holds each network's coordinates (:data:`dlnpipe.grid.NETWORK_FIELDS`)."""
    arrays = {f"W{k}": W for k, W in enumerate(res.layers)}
    if res.p is not None:
        arrays["p"] = res.p
    if res.traj_sharpness is not None:
        arrays["traj_sharpness"] = res.traj_sharpness
    arrays |= res.extras  # the optimizer's own outputs (averaged iterates, Adam's preconditioner)
    save_npz(path, meta={**meta, "device": res.device, "dtype": res.dtype}, **{k: grid[k] for k in NETWORK_FIELDS},
             status=res.status, loss_train=res.loss_train, loss_test=res.loss_test, distance=res.distance,
             diverged_step=res.diverged_step, train_path=res.train_path, record_steps=res.record_steps,
             traj_loss_train=res.traj_loss_train,
             traj_loss_test=res.traj_loss_test, traj_distance=res.traj_distance, **arrays)


def read_meta(path: str | Path) -> dict:
    """The ``meta`` of any of these files (without reading its arrays)."""
    with np.load(path, allow_pickle=False) as f:
        return json.loads(str(f["meta"])) if "meta" in f.files else {}


def read_cell(path: str | Path) -> tuple[dict, dict]:
    """(arrays, meta) of a trained or measured cell."""
    return load_npz(path)


def trained_networks(arrays: dict, arch: str, depth: int) -> list[Weights]:
    """The final weights of every network of a trained cell."""
    layers = [arrays[f"W{k}"] for k in range(depth)]
    extra = [arrays["p"]] if "p" in arrays else []
    return [Weights([W[i] for W in layers] + [p[i] for p in extra], arch=arch) for i in range(len(arrays["lr"]))]


def write_measure(path: str | Path, *, meta: dict, **arrays) -> None:
    save_npz(path, meta=meta, **arrays)
