"""Compiled kernels: small C sources in this package, built on first use with the machine's C
compiler into a shared library, cached on disk, and called through ctypes (no new dependency).

A kernel is compiled once per (source, compile-time constants, compiler, CPU): ``-march=native``
code for the CPU it runs on, its chunks of networks one vector register wide (:func:`vector_bytes`:
64 bytes with AVX-512, 32 with AVX2; a compile-time constant, so part of the key), and keyed by the
CPU's model and feature flags so that a cache shared by different machines (a cluster's home
directory) never hands one CPU another's code. The cache is
``$DLNPIPE_CACHE`` (default ``~/.cache/dlnpipe``) under ``kernels/``; a library is written to a
temporary file and renamed into place, so concurrent jobs never load a half-written one.

Where no compiler is available (or ``DLNPIPE_KERNELS=0``, or the build fails) :func:`load` returns
None and the reason, after one log line, and callers use their torch path: same results to rounding.

The ctypes boundary is declared once per kernel, in its Python module (:class:`Signature`), and
checked against the C source's prototypes before anything is built or called: a declaration that
does not match (an argument missing, one of another type) is a :class:`KernelSignatureError`, never a
segfault. Compile-time choices both sides name (the activation) are :class:`Activation`, passed to
the compiler as ``-D`` constants.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from functools import cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC")


class Activation(IntEnum):
    """The elementwise nonlinearity of a compiled step (activated.c's ``ACT``; NONE: no compiled step)."""

    NONE = 0
    GELU = 1
    RELU = 2

    def defines(self) -> dict[str, int]:
        """The -D constants of this choice: ``ACT`` and every ``ACT_<NAME>`` the C source compares it with."""
        return {"ACT": int(self), **{f"ACT_{a.name}": int(a) for a in Activation}}


@dataclass(frozen=True)
class Signature:
    """An exported C function as ctypes calls it: its result and argument types."""

    restype: Any
    argtypes: tuple[Any, ...]


class KernelSignatureError(RuntimeError):
    """A kernel's declared signature does not match its C source."""


_C_SCALARS = {"int": ctypes.c_int, "long": ctypes.c_long, "void": None}
_EXPORTED = re.compile(r"^(int|void)\s+(dlnpipe_\w+)\s*\(([^)]*)\)\s*\{", re.MULTILINE)


def prototypes(source: str) -> dict[str, tuple[Any, list[tuple[str, Any]]]]:
    """The exported functions (``dlnpipe_*``) of a C source: name -> (result type, [(argument, ctypes type)]);
    any pointer is ``c_void_p``."""
    out = {}
    for restype, name, args in _EXPORTED.findall(source):
        parsed: list[tuple[str, Any]] = []
        for arg in (a.strip() for a in args.split(",") if a.strip() not in ("", "void")):
            arg_name = re.findall(r"\w+", arg)[-1]
            if "*" in arg:
                parsed.append((arg_name, ctypes.c_void_p))
            else:
                base = [t for t in re.findall(r"\w+", arg) if t in _C_SCALARS]
                if not base:
                    raise KernelSignatureError(f"{name}: argument {arg!r} has a type this check does not know")
                parsed.append((arg_name, _C_SCALARS[base[0]]))
        out[name] = (_C_SCALARS[restype], parsed)
    return out


def check_signatures(kernel: str, source: str, declared: Mapping[str, Signature]) -> None:
    """Raise :class:`KernelSignatureError` naming the first difference between ``declared`` and the
    prototypes of ``source`` (the kernel ``kernel``'s C code)."""
    found = prototypes(source)
    for name, sig in declared.items():
        if name not in found:
            raise KernelSignatureError(f"{kernel}.c exports no function {name}")
        restype, args = found[name]
        if sig.restype is not restype:
            raise KernelSignatureError(f"{kernel}.c: {name} returns {restype}, declared {sig.restype}")
        if len(sig.argtypes) != len(args):
            raise KernelSignatureError(f"{kernel}.c: {name} takes {len(args)} arguments "
                                       f"({', '.join(a for a, _ in args)}), declared {len(sig.argtypes)}")
        for i, ((arg, ctype), want) in enumerate(zip(args, sig.argtypes)):
            if ctype is not want:
                raise KernelSignatureError(f"{kernel}.c: argument {i} ({arg}) of {name} is {ctype.__name__}, "
                                           f"declared {want.__name__}")


def enabled() -> bool:
    return os.environ.get("DLNPIPE_KERNELS", "1") not in ("0", "false", "no", "off")


VECTOR_WIDTHS = (16, 32, 64)  # bytes: SSE/NEON, AVX2, AVX-512


def vector_bytes() -> int:
    """The SIMD register size the kernels are built for: ``$DLNPIPE_VECTOR_BYTES`` if set (16, 32 or 64), else
    the CPU's widest (64 with AVX-512F, 32 with AVX or AVX2, else 16). A chunk holds this many bytes of each
    network's numbers: one register of networks; a wider chunk than the registers only splits every lane loop
    in two (docs/performance.md has the measurements). The results agree to rounding at every width."""
    given = os.environ.get("DLNPIPE_VECTOR_BYTES")
    if given:
        if not given.isdigit() or int(given) not in VECTOR_WIDTHS:
            raise ValueError(f"DLNPIPE_VECTOR_BYTES must be one of {VECTOR_WIDTHS}, got {given!r}")
        return int(given)
    flags = set(" ".join(line for line in _cpu().splitlines() if line.startswith(("flags", "Features"))).split())
    return 64 if "avx512f" in flags else 32 if flags & {"avx", "avx2"} else 16


def describe_cpu() -> str:
    """The CPU's model and the vector width the kernels are built for (what a benchmark prints beside its
    timings)."""
    models = [line.split(":", 1)[1].strip() for line in _cpu().splitlines() if line.startswith("model name")]
    return f"{models[0] if models else platform.machine()}, {vector_bytes()}-byte vectors"


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
def _load(name: str, defines: tuple, libs: tuple) -> tuple[ctypes.CDLL | None, str]:
    if not enabled():
        log.info("compiled kernels are off (DLNPIPE_KERNELS=0): %s uses its torch path", name)
        return None, "compiled kernels are off (DLNPIPE_KERNELS=0)"
    source = Path(__file__).with_name(f"{name}.c")
    cc = compiler()
    if cc is None:
        log.warning("no C compiler found ($CC, cc, gcc): %s uses its torch path (slower, same results)", name)
        return None, "no C compiler found ($CC, cc, gcc)"
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
        return ctypes.CDLL(str(out)), ""
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        line = detail.strip().splitlines()[-1] if detail.strip() else str(err)
        log.warning("could not build or load the %s kernel (%s): using the torch path (slower, same results)",
                    name, line)
        return None, f"the {name} kernel could not be built or loaded: {line}"


LANES = {"dlnpipe_lanes": Signature(ctypes.c_int, ())}  # every kernel's: the networks per chunk it packs


def load(name: str, signatures: Mapping[str, Signature], *, libs: tuple[str, ...] = (),
         **defines) -> tuple[ctypes.CDLL | None, str]:
    """The compiled kernel ``<name>.c`` with these ``-D`` constants and ``VECTOR_BYTES`` = :func:`vector_bytes`,
    its functions ``signatures`` checked against the source and bound; or None and why it cannot be built (a
    signature that does not match raises). Every kernel exports ``dlnpipe_lanes()``, the networks per chunk it
    was built for, by which its caller lays out its arrays (:func:`dlnpipe.kernels.lanes.lanes`)."""
    signatures = {**LANES, **signatures}
    check_signatures(name, Path(__file__).with_name(f"{name}.c").read_text(), signatures)
    defines["VECTOR_BYTES"] = vector_bytes()
    lib, why = _load(name, tuple(sorted(defines.items())), tuple(libs))
    if lib is not None:
        for fn, sig in signatures.items():
            getattr(lib, fn).argtypes, getattr(lib, fn).restype = list(sig.argtypes), sig.restype
    return lib, why
