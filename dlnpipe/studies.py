"""A study's place on disk: ``results/<study>/`` holds everything one study produces (datasets, trained
and measured cells, the cube, tables, figures, report, MLflow markers, logs and benchmarks), so that the
default study, a quick check, a cluster sweep and a researcher's own questions live side by side in one
checkout and no job of one study reads, writes or deletes a file of another. The MLflow store
(``results/mlflow.db``) is the one file they share: each study logs into experiments of its own
(``<prefix><study>/<experiment>``, :mod:`dlnpipe.tracking`).
"""

from __future__ import annotations

import re
from pathlib import Path

from dlnpipe.config import STUDY_NAME, ConfigError

# Names a study cannot take: the entries of results/ itself, and of the layout before per-study directories.
RESERVED = ("benchmarks", "bounds", "cube.zarr", "data", "figures", "logs", "measure", "mlflow", "mlflow.db",
            "report.html", "train")
# What a study wrote directly under results/ before each study had its own directory.
OLD_LAYOUT = ("cube.zarr", "data", "train", "measure", "bounds", "figures")


class LayoutError(ValueError):
    """results/ holds files of the layout before per-study directories."""


def study_dir(results: str | Path, name: str) -> str:
    """``<results>/<name>``, the study's directory (relative as given: rules name relative paths); the one
    check of a study's name, whether it comes from the `study:` key, a config file's name or `dlnpipe new`."""
    if not re.match(STUDY_NAME, name):
        raise ConfigError(f"study: {name!r} is not a study name (letters, digits, _ . -, first a letter or digit): "
                          "name the study with the config's `study:` key (dlnpipe new: --name)")
    if name in RESERVED:
        raise ConfigError(f"study: {name!r} is the name of an entry of results/ itself; choose another study name")
    return f"{results}/{name}"


def check_layout(results: str | Path) -> None:
    """Refuse to mix a ``results/`` written the old way (one study directly under it) with the new layout."""
    old = [name for name in OLD_LAYOUT if (Path(results) / name).exists()]
    if old:
        listed = " ".join(f"{results}/{name}" for name in old)
        raise LayoutError(
            f"{results}/ holds a study written before each study had its own directory ({listed}); move it into "
            f"a study's directory (the default study: mkdir -p {results}/default && mv {listed} {results}/default/) "
            f"or remove it, then run again")
