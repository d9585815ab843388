"""dlnpipe as a package: one version everywhere, dependencies the lock satisfies, the workflow found where
it is installed, and `dlnpipe new`. (The wheel itself, installed into a fresh venv and run outside the
checkout, is CI's `make package`: .ci/check-package.)"""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

import dlnpipe
from dlnpipe.scaffold import new_study, workflow_root

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def locked() -> dict[str, str]:
    lines = (ROOT / "envs/requirements.lock").read_text().splitlines()
    pins = dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))
    return {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in pins.items()}


def test_one_version_everywhere():
    version = dlnpipe.__version__
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dlnpipe.__version__"}
    assert yaml.safe_load((ROOT / "CITATION.cff").read_text())["version"] == version
    headings = re.findall(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert headings[0] in ("Unreleased", version)  # work not yet released sits above the release it follows
    assert next(h for h in headings if h != "Unreleased") == version
    out = subprocess.run([sys.executable, "-m", "dlnpipe", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"dlnpipe {version}"
    from dlnpipe.io import versions

    assert versions()["dlnpipe"] == version  # what the cube's root records
    assert "MIT License" in (ROOT / "LICENSE").read_text() and PYPROJECT["project"]["license"] == "MIT"


def test_declared_dependencies_are_satisfied_by_the_lock():
    """`pip install dlnpipe[...]` and `make` (the lock) agree: every declared range admits the locked version."""
    pins = locked()
    project = PYPROJECT["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for items in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in items if not r.startswith("dlnpipe")]
    env = {"python_version": "3.11"}  # the lock's Python
    for req in reqs:
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req} is not in envs/requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req} does not admit the locked {pins[name]}"
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"


def test_the_workflow_is_found_where_it_is(tmp_path):
    root = workflow_root()  # in this checkout (editable install): the repository's top level
    assert root == ROOT and (root / "Snakefile").is_file()


def test_new_study_writes_a_directory_that_uses_the_workflow(tmp_path):
    written = new_study(tmp_path / "my_study")
    names = sorted(str(p.relative_to(tmp_path / "my_study")) for p in written)
    assert names == ["README.md", "Snakefile", "config.yaml", "profiles/default/config.yaml",
                     "profiles/slurm/config.yaml"]
    from dlnpipe.config import load, study_name

    cfg = load(tmp_path / "my_study/config.yaml")  # a valid study, named after its directory
    assert study_name(cfg) == "my_study" and list(cfg.experiments) == ["sharpness"]
    snakefile = (tmp_path / "my_study/Snakefile").read_text()
    assert "module dlnpipe:" in snakefile and "use rule * from dlnpipe" in snakefile
    assert (tmp_path / "my_study/profiles/default/config.yaml").read_bytes() == (
        ROOT / "profiles/default/config.yaml").read_bytes()
    with pytest.raises(ValueError, match="already holds Snakefile, config.yaml"):
        new_study(tmp_path / "my_study")
    with pytest.raises(ValueError, match="is the name of an entry of results/"):
        new_study(tmp_path / "x", name="train")


@pytest.mark.slow
def test_new_study_runs_where_it_is(tmp_path):
    """`dlnpipe new` then `snakemake` in that directory (a dry run: the package check runs it for real)."""
    from workflow_utils import BIN, env

    subprocess.run([str(BIN / "dlnpipe"), "new", "s1"], cwd=tmp_path, check=True, capture_output=True, env=env())
    out = subprocess.run([str(BIN / "snakemake"), "-n", "--cores", "2"], cwd=tmp_path / "s1", capture_output=True,
                         text=True, env=env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert "results/s1/train/sharpness/small-L4-m5-paper-p0.npz" in out.stdout
    assert "keep-going" in (tmp_path / "s1/profiles/default/config.yaml").read_text()


def test_conda_environment_lists_exactly_the_locked_packages():
    """envs/dlnpipe.yaml works as Snakemake copies it (alone): a conda environment of Python 3.11 whose pip
    section is the lock itself, nothing referring to files beside it."""
    env = yaml.safe_load((ROOT / "envs/dlnpipe.yaml").read_text())
    assert set(env) == {"name", "channels", "dependencies"} and env["channels"] == ["conda-forge"]
    deps = env["dependencies"]
    assert deps[:2] == ["python=3.11", "pip"] and list(deps[2]) == ["pip"] and len(deps) == 3
    pip = deps[2]["pip"]
    lock = [line for line in (ROOT / "envs/requirements.lock").read_text().splitlines() if not line.startswith("#")]
    assert pip == lock and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==\S+", p) for p in pip)


def test_jobs_in_another_environment_import_this_package_through_the_link(tmp_path):
    """With --sdm conda the jobs' python is another interpreter: PYTHONPATH = package_link(...) gives it this
    dlnpipe and nothing else of this venv (here: this python without its site-packages, -S)."""
    from dlnpipe.scaffold import package_link

    path = package_link(tmp_path)
    assert sorted(p.name for p in Path(path).iterdir()) == ["dlnpipe"]
    assert package_link(tmp_path) == path  # idempotent
    code = "import dlnpipe, importlib.util as u; print(dlnpipe.__version__, u.find_spec('numpy') is None)"
    out = subprocess.run([sys.executable, "-S", "-c", code], env={"PYTHONPATH": path}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [dlnpipe.__version__, "True"]


def test_snakemake_lint_passes(tmp_path):
    """`snakemake --lint`: every rule has its log, its conda environment (envs/dlnpipe.yaml), no absolute paths."""
    from workflow_utils import BIN, env, workdir

    wd = workdir(tmp_path / "wd")
    out = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=wd, capture_output=True, text=True, env=env())
    said = out.stdout + out.stderr
    assert out.returncode == 0 and "Congratulations, your workflow is in a good condition!" in said, said[-3000:]
