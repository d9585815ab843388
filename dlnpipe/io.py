"""Small, atomic file I/O for the stages: a killed job never leaves a half-written result."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np


def save_npz(path: str | Path, meta: dict | None = None, **arrays) -> None:
    """Write arrays (and a JSON ``meta``) to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta or {}, default=str)), **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_npz(path: str | Path) -> tuple[dict, dict]:
    """(arrays, meta) of a file written by :func:`save_npz`."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k != "meta"}
        meta = json.loads(str(f["meta"])) if "meta" in f.files else {}
    return arrays, meta


def fingerprint(contents: list[tuple[dict, dict]]) -> str:
    """A digest of files' contents, (arrays, meta) each as :func:`load_npz` reads them: every array's name,
    dtype, shape and bytes, and the meta, not the file's bytes (a zip records when it was written), so that
    results computed again, the same to the bit, have the same fingerprint."""
    h = hashlib.sha256()
    for arrays, meta in contents:
        h.update(json.dumps(meta, sort_keys=True, default=str).encode())
        for key in sorted(arrays):
            a = np.ascontiguousarray(arrays[key])
            h.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()[:32]


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished directory into place (removing an older one)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def git_revision(cwd: str | Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        rev = out.stdout.strip()
        if not rev:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict:
    import importlib.metadata as md

    from dlnpipe import __version__

    out = {"dlnpipe": __version__}  # the code's own version, whatever an installer recorded
    for pkg in ("torch", "numpy", "scipy", "xarray", "zarr", "snakemake", "mlflow", "seaborn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
