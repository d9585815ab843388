"""Stage gather_cube: one experiment's per-cell files become its group of the labelled store
``results/<study>/cube.zarr`` (one job per experiment); ``cube_root`` writes the store's root (the study's
attrs). The schema and layout: :mod:`dlnpipe.cube`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from dlnpipe.config import ExperimentConfig, StudyConfig
from dlnpipe.cube import experiment_dataset, write_group, write_root
from dlnpipe.files import read_cell, read_dataset
from dlnpipe.grid import Cell
from dlnpipe.io import git_revision, versions

log = logging.getLogger(__name__)


def gather(name: str, exp: ExperimentConfig, cells: list[tuple[Cell, Path, Path]], data_paths: dict[str, Path],
           out: str | Path, *, devices: list[str] | None = None) -> None:
    """Write experiment ``name``'s group; ``cells`` lists (cell, train file, measure file), ``data_paths``
    data id -> file."""
    mine = [(cell, read_cell(t)[0], read_cell(m)[0]) for cell, t, m in cells]
    datasets = {key: read_dataset(p) for key, p in sorted(data_paths.items())}
    ds = experiment_dataset(name, exp, mine, datasets)
    ds.attrs["devices"] = json.dumps(sorted(set(devices or [])))
    log.info("experiment %s: %s", name, dict(ds.sizes))
    write_group(ds, out)


def root(cfg: StudyConfig, cube: str | Path) -> Path:
    """Write the root of the cube: the study's config, the versions and the git revision."""
    attrs = {"config": json.dumps(cfg.model_dump(mode="json")), "versions": json.dumps(versions()),
             "git_revision": git_revision()}
    return write_root(attrs, cube, groups=list(cfg.experiments))
