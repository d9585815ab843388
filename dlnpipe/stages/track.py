"""Stage track: the MLflow store created once (``track-init``), then each experiment's training
configurations logged after its results exist (``track``: one job per experiment, relogging only the cells
whose results changed); the logging itself: :mod:`dlnpipe.tracking`."""

from __future__ import annotations

import json
from pathlib import Path

from dlnpipe.files import read_cell, read_datasets
from dlnpipe.grid import ALL_DATA
from dlnpipe.io import fingerprint, git_revision
from dlnpipe.theory import bounds
from dlnpipe.tracking import init, log_cells


def run_init(uri: str, names: list[str], out: str | Path, *, artifacts: str | Path,
             views: dict[str, str] | None = None) -> dict:
    ids = init(uri, names, artifacts=artifacts, views=views)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"tracking_uri": ids["uri"], "experiments": ids["experiments"]}, indent=1))
    return ids


def run(uri: str, name: str, groups: dict[str, list[str]], data_paths, train_files, measure_files, *, cube: str,
        out: str | Path, study: str = "") -> dict:
    """Log one experiment: ``groups`` maps each cell (without part) to its parts' ids, whose train and measure
    files are among ``train_files`` and ``measure_files`` (named by the part's id); ``data_paths`` are the
    experiment's datasets. Writes a marker with what was logged, per cell."""
    train = {Path(p).stem: p for p in train_files}
    measure = {Path(p).stem: p for p in measure_files}
    sets = read_datasets(data_paths)
    cells = []
    for cell_id, part_ids in groups.items():
        contents = [(read_cell(train[i]), read_cell(measure[i])) for i in part_ids]
        parts = [(t[1]["spec"], t[0], m[0]) for t, m in contents]
        data = parts[0][0]["cell"]["data"]
        own = {k: ds for k, ds in sets.items() if data in (ALL_DATA, k)}
        depth = parts[0][0]["cell"]["depth"]
        data_contents = [({"X": ds.X, "y": ds.y, "X_test": ds.X_test, "y_test": ds.y_test}, ds.meta)
                         for _, ds in sorted(own.items())]
        digest = fingerprint(data_contents + [c for pair in contents for c in pair])
        cells.append({"cell": cell_id, "parts": parts, "datasets": own, "fingerprint": digest,
                      "theory": {key: bounds(ds, depth) for key, ds in own.items()}})
    marker = log_cells(uri, name, cells, tags={"dlnpipe.git_revision": git_revision(), "dlnpipe.cube": cube,
                                               "dlnpipe.study": study})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(marker, indent=1))
    return marker
