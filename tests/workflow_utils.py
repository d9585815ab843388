"""Helpers for tests that drive the real Snakemake CLI in temporary directories."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "workflow/configs/quick.yaml"
BIN = Path(sys.executable).parent
# Timeouts in these tests are bounds for a hang, never a measure of speed: each is several times what
# the slowest machine needs (a quick study takes about 3 min on 2 cores of an AMD EPYC with AVX2,
# without AVX-512; CI machines may be three times slower).
STUDY_TIMEOUT_S = 1800  # one Snakemake run of a test study
SERVER_TIMEOUT_S = 300  # a server (mlflow) to answer after its start


def workdir(tmp: Path) -> Path:
    """A fresh copy of the workflow (not of results) to run in."""
    tmp.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "config.yaml", "workflow", "profiles", "envs"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp / name)
    return tmp


def copy_study(src: Path, dst: Path) -> Path:
    """A finished study's checkout copied into a fresh workflow copy: its results and Snakemake's records
    (modification times kept, so nothing is out of date), without logs and locks."""
    wd = workdir(dst)
    shutil.copytree(src / "results", wd / "results")
    shutil.copytree(src / ".snakemake", wd / ".snakemake", ignore=shutil.ignore_patterns("log", "locks"))
    return wd


def env(**extra) -> dict:
    out = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    out.pop("MLFLOW_TRACKING_URI", None)
    out.update(extra)
    return out


def snakemake(cwd: Path, *args, check=True, timeout=STUDY_TIMEOUT_S, extra_env=None) -> subprocess.CompletedProcess:
    out = subprocess.run([str(BIN / "snakemake"), *args], cwd=cwd, env=env(**(extra_env or {})),
                         capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def wait_for_line(path: Path, text: str, *, alive: subprocess.Popen | None = None,
                  timeout: float = STUDY_TIMEOUT_S) -> None:
    """Until the file ``path`` (a job's log) holds a line containing ``text``; fails when ``alive``, the
    process that should write it, has ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"the run ended before {path} said {text!r}")
        time.sleep(0.1)
    raise AssertionError(f"{path} did not say {text!r} within {timeout} s")


def configurations(config_path: Path) -> dict[str, int]:
    """Training configurations (init, depth, width, dataset (κ, spectrum, w*), η, s) per experiment: one MLflow
    run each."""
    import yaml

    from dlnpipe.config import expand, validate

    cfg = validate(yaml.safe_load(config_path.read_text()))
    out = {}
    for name, exp in cfg.experiments.items():
        lrs = sum(len(expand(r.lr)) for r in exp.runs)
        out[name] = (len(exp.inits) * len(exp.depths) * len(exp.widths) * len(exp.data.points())
                     * len(exp.optim_points()) * lrs * len(expand(exp.scales)))
    return out


def open_tree(path: Path) -> xr.DataTree:
    return xr.open_datatree(path, engine="zarr", consolidated=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = SERVER_TIMEOUT_S) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout} s")


class MlflowServer:
    """A real ``mlflow server`` on loopback over a SQLite store, stopped on exit."""

    def __init__(self, db: Path, port: int | None = None, *, ui_only: bool = False):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [str(BIN / "mlflow"), "ui" if ui_only else "server", "--backend-store-uri", f"sqlite:///{db}",
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        if not ui_only:
            cmd += ["--default-artifact-root", (db.parent / "server-artifacts").as_uri()]
        self.proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

    def __enter__(self):
        wait_http(self.url + "/health")
        return self

    def __exit__(self, *exc):
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=SERVER_TIMEOUT_S)
