"""Stage track: the MLflow store created once (``track-init``), then one cell's training
configurations logged after its results exist (``track``); the logging itself: :mod:`dlnpipe.tracking`."""

from __future__ import annotations

import json
from pathlib import Path

from dlnpipe.files import read_cell, read_datasets
from dlnpipe.io import git_revision
from dlnpipe.theory import bounds
from dlnpipe.tracking import init, log_cell


def run_init(uri: str, names: list[str], out: str | Path, *, artifacts: str | Path,
             views: dict[str, str] | None = None) -> dict:
    ids = init(uri, names, artifacts=artifacts, views=views)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"tracking_uri": ids["uri"], "experiments": ids["experiments"]}, indent=1))
    return ids


def run(uri: str, name: str, cell_id: str, data_paths, train_files, measure_files, *, cube: str,
        out: str | Path, study: str = "") -> dict:
    """Log one cell (all its parts) and write a marker with what was logged."""
    parts = []
    for t, m in zip(train_files, measure_files):
        train, meta = read_cell(t)
        parts.append((meta["spec"], train, read_cell(m)[0]))
    sets = read_datasets(data_paths)
    depth = parts[0][0]["cell"]["depth"]
    theory = {key: bounds(ds, depth) for key, ds in sets.items()}
    marker = log_cell(uri, name, cell_id, parts, theory=theory, datasets=sets,
                      tags={"dlnpipe.git_revision": git_revision(), "dlnpipe.cube": cube,
                                            "dlnpipe.study": study})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(marker, indent=1))
    return marker
