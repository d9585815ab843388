"""Snakemake's lock on a working directory, after a run that was killed as a whole.

A Snakemake process locks the outputs of its run in ``.snakemake/locks/`` and removes the lock when it
ends; killed (SIGKILL, a lost terminal, a rebooted node) it cannot, and the next run stops on the
stale lock until ``snakemake --unlock``. :func:`unlock_if_stale` removes the lock only when no
Snakemake process runs in the directory (found through ``/proc``: Linux), which is what ``make run``
does before it starts; with a live one it leaves everything as it is.
"""

from __future__ import annotations

import os
from pathlib import Path


def holders(directory: str | Path) -> list[int]:
    """Process ids of the Snakemake processes whose working directory is ``directory``."""
    directory = Path(directory).resolve()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(entry / "cwd")).resolve()
        except OSError:  # gone, or not ours to read
            continue
        if cwd == directory and any(Path(os.fsdecode(part)).name == "snakemake" for part in cmdline[:2]):
            found.append(int(entry.name))
    return found


def unlock_if_stale(directory: str | Path = ".") -> str:
    """Remove ``directory``'s Snakemake lock when no Snakemake process holds it; say what was done."""
    locks = [p for p in (Path(directory) / ".snakemake" / "locks").glob("*") if p.is_file()]
    if not locks:
        return "no lock"
    pids = holders(directory)
    if pids:
        return f"locked by a running Snakemake (pid {', '.join(map(str, pids))}): left as it is"
    for p in locks:
        p.unlink()
    return f"removed a stale lock ({len(locks)} files): no Snakemake process runs in {Path(directory).resolve()}"
