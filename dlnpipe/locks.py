"""Snakemake's lock on a working directory, after a run that was killed as a whole.

A Snakemake process locks the outputs of its run in ``.snakemake/locks/`` and removes the lock when it
ends; killed (SIGKILL, a lost terminal, a rebooted node) it cannot, and the next run stops on the
stale lock until ``snakemake --unlock``. :func:`unlock_if_stale` removes the lock only when no
Snakemake process holds it, which is what ``make run`` does before it starts; with a live one it
leaves everything as it is.

Who holds it: every run of the workflow records its host and pid in ``.snakemake/dlnpipe-holders/``
when it starts (Snakemake's ``onstart``, after it has taken the lock) and removes the record when it
ends (:func:`record_holder`, :func:`release_holder`). On this host a record is checked against
``/proc`` (a run without a record too: any Snakemake process working in the directory); a record of
another host, on a filesystem shared between login nodes, cannot be checked from here, so unlocking
is refused unless asked explicitly (``other_hosts=True``, ``dlnpipe unlock --other-hosts``).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

HOLDERS = Path(".snakemake") / "dlnpipe-holders"


def _record_path(directory: str | Path, host: str, pid: int) -> Path:
    return Path(directory) / HOLDERS / f"{host}.{pid}.json"


def record_holder(directory: str | Path = ".", *, study: str = "") -> Path:
    """Record that this process (a Snakemake run, on this host) holds the directory's lock."""
    host, pid = socket.gethostname(), os.getpid()
    path = _record_path(directory, host, pid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "study": study, "started": time.time()}))
    return path


def release_holder(directory: str | Path = ".") -> None:
    """Remove this process's record (the run ends)."""
    _record_path(directory, socket.gethostname(), os.getpid()).unlink(missing_ok=True)


def records(directory: str | Path) -> list[dict]:
    """The recorded holders (each with its file as ``path``)."""
    out = []
    for path in sorted((Path(directory) / HOLDERS).glob("*.json")):
        try:
            out.append({**json.loads(path.read_text()), "path": path})
        except (OSError, ValueError):  # half-written or gone: not a holder
            continue
    return out


def _is_snakemake(pid: int, directory: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        cwd = Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
    except OSError:  # gone, or not ours to read
        return False
    return cwd == directory and any(Path(os.fsdecode(part)).name == "snakemake" for part in cmdline[:2])


def holders(directory: str | Path) -> list[int]:
    """Process ids of the Snakemake processes of this host whose working directory is ``directory``."""
    directory = Path(directory).resolve()
    return [int(entry.name) for entry in Path("/proc").glob("[0-9]*") if _is_snakemake(int(entry.name), directory)]


def unlock_if_stale(directory: str | Path = ".", *, other_hosts: bool = False) -> str:
    """Remove ``directory``'s Snakemake lock when no Snakemake process holds it; say what was done.
    A run recorded on another host counts as live unless ``other_hosts``."""
    locks = [p for p in (Path(directory) / ".snakemake" / "locks").glob("*") if p.is_file()]
    held = records(directory)
    if not locks:
        for rec in held:  # a run holds its lock as long as its record: this one was killed, its lock removed since
            rec["path"].unlink(missing_ok=True)
        return "no lock"
    here = socket.gethostname()
    remote = [r for r in held if r.get("host") != here]
    if remote and not other_hosts:
        where = ", ".join(f"{r.get('host')} (pid {r.get('pid')}, study {r.get('study') or '?'})" for r in remote)
        return (f"locked by a Snakemake run on another host: {where}: left as it is; if that run is gone, "
                f"`python -m dlnpipe unlock --other-hosts` removes the lock")
    pids = holders(directory)
    if pids:
        return f"locked by a running Snakemake (pid {', '.join(map(str, pids))}): left as it is"
    for p in locks:
        p.unlink()
    for rec in held:
        rec["path"].unlink(missing_ok=True)
    gone = f" and {len(remote)} run(s) recorded on other hosts" if remote else ""
    return (f"removed a stale lock ({len(locks)} files): no Snakemake process runs in "
            f"{Path(directory).resolve()}{gone}")
