"""Compiled kernels: small C sources in this package, built on first use with the machine's C
compiler into a shared library, cached on disk, and called through ctypes (no new dependency).

A kernel is compiled once per (source, compile-time constants, compiler, CPU): ``-march=native``
code for the CPU it runs on, keyed by the CPU's model and feature flags so that a cache shared by
different machines (a cluster's home directory) never hands one CPU another's code. The cache is
``$DLNPIPE_CACHE`` (default ``~/.cache/dlnpipe``) under ``kernels/``; a library is written to a
temporary file and renamed into place, so concurrent jobs never load a half-written one.

Where no compiler is available (or ``DLNPIPE_KERNELS=0``, or the build fails) :func:`load` returns
None after one log line, and callers use their torch path: same results to rounding.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC")


def enabled() -> bool:
    return os.environ.get("DLNPIPE_KERNELS", "1") not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    root = os.environ.get("DLNPIPE_CACHE") or Path.home() / ".cache" / "dlnpipe"
    return Path(root) / "kernels"


def compiler() -> str | None:
    """The C compiler: ``$CC``, else cc or gcc on the PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@cache
def _cpu() -> str:
    """The CPU's model and feature flags (what -march=native compiles for)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [line for line in text.splitlines() if line.startswith(("model name", "flags", "Features"))]
        return platform.machine() + "\n" + "\n".join(dict.fromkeys(lines))
    except OSError:
        return platform.machine() + " " + platform.processor()


def _build(cc: str, source: Path, defines: dict, libs: tuple[str, ...], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".so")
    os.close(fd)
    try:
        cmd = [cc, *FLAGS, *(f"-D{k}={v}" for k, v in defines.items()), str(source), "-o", tmp, *libs]
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@cache
def _load(name: str, defines: tuple, libs: tuple) -> ctypes.CDLL | None:
    if not enabled():
        log.info("compiled kernels are off (DLNPIPE_KERNELS=0): %s uses its torch path", name)
        return None
    source = Path(__file__).with_name(f"{name}.c")
    cc = compiler()
    if cc is None:
        log.warning("no C compiler found ($CC, cc, gcc): %s uses its torch path (slower, same results)", name)
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = cc
    key = "\n".join([source.read_text(), repr(defines), repr(libs), " ".join(FLAGS), version, _cpu()])
    out = cache_dir() / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
    try:
        if not out.exists():
            log.info("compiling %s %s with %s into %s", name, dict(defines), cc, out)
            _build(cc, source, dict(defines), libs, out)
        return ctypes.CDLL(str(out))
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        log.warning("could not build or load the %s kernel (%s): using the torch path (slower, same results)",
                    name, detail.strip().splitlines()[-1] if detail.strip() else err)
        return None


def load(name: str, *, libs: tuple[str, ...] = (), **defines) -> ctypes.CDLL | None:
    """The compiled kernel ``<name>.c`` with these ``-D`` constants, or None where it cannot be built."""
    return _load(name, tuple(sorted(defines.items())), tuple(libs))
