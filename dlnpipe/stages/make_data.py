"""Stage make_dataset: one dataset per (experiment, kappa, spectrum, w* direction), written once and
read by every cell."""

from __future__ import annotations

import logging
from pathlib import Path

from dlnpipe.config import DataConfig
from dlnpipe.data import Dataset, load_dataset, make_dataset
from dlnpipe.files import write_dataset

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
    write_dataset(out, ds, experiment=experiment, data_id=data_id)
    log.info("dataset %s: n=%d d=%d κ=%.6g a=%.6g Λ=%.6g R*=%.6g", out, ds.n, ds.d, ds.kappa, ds.a, ds.lam_max,
             ds.loss_opt)
    return ds
