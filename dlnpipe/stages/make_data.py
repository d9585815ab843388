"""Stage make_dataset: one dataset per (experiment, kappa, spectrum, w* direction), written once and
read by every cell."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dlnpipe.config import DataConfig
from dlnpipe.data import Dataset, dataset_from_arrays, load_dataset, make_dataset
from dlnpipe.io import load_npz, save_npz

log = logging.getLogger(__name__)


def build(data: DataConfig, kappa: float | None, spectrum: str | None = None, wstar: str | None = None) -> Dataset:
    """The dataset; ``spectrum`` and ``wstar`` pick one value when the config lists several."""
    if data.file is not None:
        return load_dataset(data.file)
    first = lambda v: v[0] if isinstance(v, list) else v  # noqa: E731
    return make_dataset(data.n, data.d, noise=data.noise, seed=data.seed, kappa=kappa,
                        spectrum=spectrum if kappa is not None and spectrum else first(data.spectrum),
                        wstar=wstar if kappa is not None and wstar else first(data.wstar))


def run(data: DataConfig, kappa: float | None, out: str | Path, *, spectrum: str | None = None,
        wstar: str | None = None, experiment: str = "", data_id: str = "") -> Dataset:
    ds = build(data, kappa, spectrum, wstar)
    meta = {**ds.meta, "experiment": experiment, "data_id": data_id, "kappa": ds.kappa, "a": ds.a,
            "lam_max": ds.lam_max, "lam_min": ds.lam_min, "loss_opt": ds.loss_opt}
    save_npz(out, meta=meta, X=ds.X, y=ds.y, X_test=ds.X_test, y_test=ds.y_test)
    log.info("dataset %s: n=%d d=%d κ=%.6g a=%.6g Λ=%.6g R*=%.6g", out, ds.n, ds.d, ds.kappa, ds.a, ds.lam_max,
             ds.loss_opt)
    return ds


def read(path: str | Path) -> Dataset:
    """A dataset written by :func:`run` (already normalised: no second rescaling)."""
    arrays, meta = load_npz(path)
    return dataset_from_arrays(arrays["X"], arrays["y"], arrays["X_test"], arrays["y_test"], rescale=False,
                               meta=meta, name=str(path))


def read_many(paths) -> dict[str, Dataset]:
    """Datasets written by :func:`run`, by their data id (a cell may use several)."""
    out = {}
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        ds = read(path)
        out[ds.meta.get("data_id") or "paper"] = ds
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
