"""Stage gather_cube: the per-cell files of the study become one labelled store, ``results/cube.zarr``
(its schema and layout: :mod:`dlnpipe.cube`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from dlnpipe.config import StudyConfig
from dlnpipe.cube import experiment_dataset, write_cube
from dlnpipe.files import read_cell, read_dataset
from dlnpipe.grid import Cell
from dlnpipe.io import git_revision, versions

log = logging.getLogger(__name__)


def gather(cfg: StudyConfig, cells: list[tuple[Cell, Path, Path]], data_paths: dict[tuple[str, str], Path],
           out: str | Path, *, devices: list[str] | None = None):
    """Write the cube; ``cells`` lists (cell, train file, measure file), ``data_paths`` (exp, data_id) -> file."""
    groups = {}
    for name, exp in cfg.experiments.items():
        mine = [(cell, read_cell(t)[0], read_cell(m)[0]) for cell, t, m in cells if cell.experiment == name]
        if not mine:
            continue
        datasets = {key: read_dataset(p) for (e, key), p in sorted(data_paths.items()) if e == name}
        groups[name] = experiment_dataset(name, exp, mine, datasets)
        log.info("experiment %s: %s", name, dict(groups[name].sizes))
    attrs = {"config": json.dumps(cfg.model_dump(mode="json")), "versions": json.dumps(versions()),
             "git_revision": git_revision(), "devices": json.dumps(sorted(set(devices or [])))}
    return write_cube(groups, attrs, out)
