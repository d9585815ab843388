"""The Snakemake workflow through its real CLI, in temporary directories.

The quick config end to end (cube content, bound tables, figures), a train_cell job killed with SIGKILL
and repaired by a rerun, the default config's dry run, snakefmt, config errors. (The quick study's
determinism: a second run, beside another study, equals the first, in tests/test_studies.py.)
"""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from workflow_utils import BIN, QUICK, ROOT, STUDY_TIMEOUT_S, env, open_tree, snakemake, wait_for_line, workdir

from dlnpipe.eos import failure_kinds
from dlnpipe.status import FailureKind, Status, TrainPath

pytestmark = pytest.mark.slow


def test_quick_cube_content(quick_run):
    tree = open_tree(quick_run / "results/quick/cube.zarr")
    assert set(tree.children) == {"small", "relu", "resid", "traj", "under", "bounds", "optim"}

    assert json.loads(tree.attrs["config"])["experiments"]["small"]["depths"] == [3]
    assert "torch" in json.loads(tree.attrs["versions"]) and tree.attrs["git_revision"]
    small = tree["small"].to_dataset()
    assert small.attrs["devices"] == '["cpu"]' and "figures" not in json.loads(small.attrs["config"])
    assert small.sharpness.dims == ("init", "depth", "width", "kappa", "spectrum", "wstar", "optim", "lr", "scale",
                                    "seed")
    assert list(small.optim.values) == ["gd"] and list(small.optimizer.values) == ["gd"]
    assert list(small.spectrum.values) == ["gaussian"] and list(small.wstar.values) == ["gaussian"]
    for var in ("sharpness", "sharpness_exact", "sharpness_init", "loss_train", "loss_test", "distance", "status",
                "s_min", "s_upper", "eta_c", "traj_loss_train", "traj_distance", "sharpness_topk", "sv_ratio"):
        assert var in small, var
    assert small.status.attrs["flag_meanings"] == "converged failed diverged"
    assert list(small.status.attrs["flag_values"]) == [0, 1, 2]
    assert small.sizes["seed"] == 3 and small.sizes["eig"] == 3 and "step" in small.traj_loss_train.dims
    conv = small.status == 0
    assert int(conv.sum()) > 0
    # every converged network sits above S_min; Lanczos equals the exact formula there
    s_min = float(small.s_min.squeeze())
    assert float(small.sharpness.where(conv).min()) >= s_min
    np.testing.assert_allclose(small.sharpness.where(conv).values, small.sharpness_exact.where(conv).values,
                               rtol=1e-6)
    # the Hessian's trace: Hutchinson (with its standard error) agrees with the closed form at converged networks,
    # which never goes below T_min; the spectral density has one quadrature per probe, weights summing to 1
    for var in ("hessian_trace", "hessian_trace_stderr", "hessian_trace_init", "hessian_trace_minimizer", "trace_min",
                "trace_balanced"):
        assert var in small and small[var].attrs["long_name"], var
    conv_trace = small.hessian_trace_minimizer.where(conv)
    z = ((small.hessian_trace - conv_trace) / small.hessian_trace_stderr).values
    assert np.nanmax(np.abs(z)) < 5 and np.isfinite(z).sum() == int(conv.sum())
    assert float((conv_trace / small.trace_min).min()) >= 1 - 1e-9
    assert small.density_nodes.dims[-2:] == ("probe", "node") and small.sizes["probe"] == 3
    measured = small.density_weights.sum("node", skipna=False).values[(small.status.isin([0, 1])).values]
    assert measured.shape[0] > 0
    np.testing.assert_allclose(measured, 1.0, rtol=1e-10)  # diverged networks are not measured
    resid = tree["resid"].to_dataset()
    np.testing.assert_allclose(resid.kappa.values, [1.0, 10.0])  # controlled κ appear exactly
    np.testing.assert_allclose(resid.kappa_achieved.values.ravel(), [1.0, 10.0], rtol=1e-10)
    under = tree["under"].to_dataset()
    assert int(under.valid.sum()) == 8 and (under.status >= 0).all()  # the two parts of the split cell
    traj = tree["traj"].to_dataset()
    assert np.isfinite(traj.traj_sharpness.values).sum() == 2 * 7
    # an architecture beyond the paper, in an experiment like gelu: trained, measured, not held to linear theory
    relu = tree["relu"].to_dataset()
    assert list(relu.init.values) == ["relu"] and int((relu.status == 0).sum()) >= 3
    assert np.isfinite(relu.sharpness.where(relu.status == 0)).sum() == (relu.status == 0).sum()
    assert np.isnan(relu.sharpness_exact.values).all()  # the exact formula is for linear networks only
    # which code trained each network: the compiled kernels for GD and the linear flow on the CPU, torch for
    # the optimizers without a kernel; -1 where no network is
    for name, path in (("small", TrainPath.COMPILED), ("relu", TrainPath.COMPILED), ("bounds", TrainPath.COMPILED),
                       ("optim", TrainPath.TORCH)):
        ds = tree[name].to_dataset()
        assert set(np.unique(ds.train_path.where(ds.valid).values[ds.valid.values])) == {int(path)}, name
        assert ds.train_path.attrs["flag_meanings"] == "torch compiled"
    assert (traj.train_path.values[~traj.valid.values] == -1).all()
    # Lanczos met its tolerance for every network it measured (diverged ones are not measured)
    measured = small.status.isin([0, 1])
    assert bool(small.sharpness_converged.where(measured, True).all())
    assert not bool(small.sharpness_converged.where(small.status == 2, False).any())


def test_quick_bounds_experiment(quick_run):
    """The bounds experiment in miniature: gradient flow, κ × spectrum × w* datasets batched into one
    job per (init, depth, width); the controlled κ appear exactly in the cube; the constant table."""
    ds = open_tree(quick_run / "results/quick/cube.zarr")["bounds"].to_dataset()
    np.testing.assert_array_equal(ds.kappa.values, [1.0, 10.0])
    assert list(ds.spectrum.values) == ["geometric", "linear"] and list(ds.wstar.values) == ["random", "top"]
    # every dataset has exactly the condition number it was asked for
    np.testing.assert_allclose(ds.kappa_achieved.values, np.broadcast_to(ds.kappa.values[:, None, None], (2, 2, 2)),
                               rtol=1e-10)
    assert int(ds.valid.sum()) == 2 * 2 * 1 * 8 * 2 * 2  # inits, depths, widths, datasets, scales, seeds
    assert len(list((quick_run / "results/quick/train/bounds").glob("*.npz"))) == 2 * 2  # one job per cell
    conv = ds.status == 0
    assert int(conv.sum()) >= 0.9 * int(ds.valid.sum())
    assert float((ds.sharpness / ds.s_min).where(conv).min()) >= 1 - 1e-6  # claim 1 at the flow's limit
    np.testing.assert_allclose(ds.sharpness.where(conv).values, ds.sharpness_exact.where(conv).values, rtol=1e-5)
    const = pd.read_csv(quick_run / "results/quick/bounds/bounds_constant.csv")
    assert len(const) == 2 * 2 * 2 * 2 and (const.C >= 1).all()
    # κ = 1: Σ = I whatever the spectrum shape, so both shapes give the same networks and constant
    k1 = const[const.kappa == 1].set_index(["init", "wstar", "spectrum"]).C.unstack("spectrum")
    np.testing.assert_allclose(k1.geometric, k1.linear, rtol=1e-8)
    claims = (quick_run / "results/quick/bounds/bounds.md").read_text()
    assert "| c1      | converged => S >= S_min" in claims and "c3b" in claims
    for fig in ("ratio_kappa", "ratio_depth", "ratio_width", "structure", "topk"):
        assert (quick_run / f"results/quick/figures/bounds/{fig}.png").stat().st_size > 20_000


def test_quick_tables_and_figures(quick_run):
    res = quick_run / "results/quick"
    import pandas as pd
    from matplotlib.image import imread

    for exp in ("small", "relu", "resid", "traj", "under"):
        table = pd.read_csv(res / f"bounds/{exp}.csv")
        assert {"converged", "failed", "diverged", "s_min", "c1_fail", "c3a_fail"} <= set(table.columns)
        assert (table.c1_fail == 0).all()
        assert "## Claims" in (res / f"bounds/{exp}.md").read_text()
    relu = pd.read_csv(res / "bounds/relu.csv")
    assert (relu.c1_checked == 0).all() and (relu.c4_checked == 0).all()  # linear theory: not checked on ReLU
    expected = {"small": ["fig1a", "fig1b", "fig3", "trace", "trace_vs_sharpness", "density"],
                "relu": ["fig1a", "fig1b", "fig3"], "resid": ["fig2"],
                "traj": ["trajectories"], "under": ["fig6a", "fig6b"],
                "optim": ["optim_sharpness", "optim_trajectories", "optim_batch"]}
    for exp, figs in expected.items():
        for fig in figs:
            img = imread(res / f"figures/{exp}/{fig}.png")
            assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
            assert img.std() > 0.01  # not a blank canvas
            assert (res / f"figures/{exp}/{fig}.pdf").read_bytes()[:5] == b"%PDF-"
    for rule in ("train_cell", "measure_sharpness"):
        assert any((quick_run / "results/quick/logs" / rule).rglob("*.log"))
    assert any((quick_run / "results/quick/benchmarks/train_cell").rglob("*.tsv"))


def test_quick_optimizers(quick_run):
    """The optim experiment: an optim axis with each setting's options as coordinates, the optimizers'
    own measurements, their thresholds and claims in the tables, their settings in MLflow."""
    import pandas as pd

    ds = open_tree(quick_run / "results/quick/cube.zarr")["optim"].to_dataset()
    assert list(ds.optim.values) == ["gd", "gd:label_noise=0.2", "heavy_ball:momentum=0.5", "adam:betas=0.9/0.999",
                                     "sgd:batch_size=2", "sgd:batch_size=3"]
    assert list(ds.optimizer.values) == ["gd", "gd", "heavy_ball", "adam", "sgd", "sgd"]
    np.testing.assert_array_equal(ds.batch_size.values, [6, 6, np.nan, np.nan, 2, 3])
    np.testing.assert_array_equal(ds.momentum.values, [np.nan, np.nan, 0.5, np.nan, np.nan, np.nan])
    assert ds.sizes["seed"] == 2 and int(ds.valid.sum()) == 6 * 4
    # every setting starts from the same initial weights: the same sharpness at init
    init = ds.sharpness_init.transpose("optim", ...).values.reshape(6, -1)
    np.testing.assert_allclose(init, np.broadcast_to(init[0], init.shape), rtol=1e-8)
    adam = ds.sel(optim="adam:betas=0.9/0.999")
    assert ds.sharpness_precond.sel(optim="gd").isnull().all() and adam.sharpness_precond.notnull().all()
    threshold = (2 + 2 * 0.9) / ((1 - 0.9) * 0.05)
    assert float(adam.sharpness_precond.max()) <= 1.1 * threshold  # Adam at its own edge of stability
    assert float(adam.traj_sharpness_precond.max()) > 10 * float(adam.traj_sharpness.max())
    noisy = ds.sel(optim="gd:label_noise=0.2")
    assert (noisy.status == Status.FAILED).all()  # label noise keeps the iterates moving
    assert (noisy.loss_train_avg < noisy.loss_train).all() and noisy.sharpness_avg.notnull().all()
    assert ds.sharpness_avg.sel(optim="heavy_ball:momentum=0.5").isnull().all()  # deterministic: no average
    claims = pd.read_csv(quick_run / "results/quick/bounds/optim.csv")
    assert {"optim", "threshold", "c8_checked", "c9_checked"} <= set(claims.columns)
    assert claims.c8_checked.sum() > 0 and claims.c9_checked.sum() > 0 and claims.c1_fail.sum() == 0
    text = (quick_run / "results/quick/bounds/optim.md").read_text()
    assert "| c9 " in text and "| c10 " in text
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{quick_run / 'results/mlflow.db'}")
    exp = client.get_experiment_by_name("dlnpipe/quick/optim")
    runs = client.search_runs([exp.experiment_id], "tags.`dlnpipe.role` = 'configuration'")
    assert {r.data.params["optim"] for r in runs} == set(ds.optim.values)
    adam_run = next(r for r in runs if r.data.params["optimizer"] == "adam")
    assert adam_run.data.params["beta1"] == "0.9" and adam_run.data.metrics["threshold"] == pytest.approx(threshold)
    assert "sharpness_precond_median" in adam_run.data.metrics


def _wait_for(pattern: str, timeout: float) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split()]
        if pids:
            return pids[0]
        time.sleep(0.2)
    raise AssertionError(f"no process matching {pattern!r} within {timeout} s")


FAULT = ROOT / "tests/data/fault.yaml"


@pytest.fixture(scope="module")
def fault_clean(tmp_path_factory):
    """The fault study run to the end, uninterrupted: what every interrupted run must end up equal to."""
    clean = workdir(tmp_path_factory.mktemp("clean"))
    snakemake(clean, "--configfile", str(FAULT), "--cores", "1")
    return clean


SLOW_LOG = "results/fault/logs/train_cell/slow/gelu-L4-m3-paper-p0.log"
TRAINING = "cell slow/gelu-L4-m3-paper-p0: 4 networks"  # the job's log line just before it trains


def _training(tmp_path, **popen):
    """The fault study started until its slow cell is training: its log says so (it then trains for
    seconds, and the test kills it within a tenth of one, on any machine); (run dir, Snakemake process, pid
    of the training python process — not its `bash -c` wrapper, whose command line also matches)."""
    wd = workdir(tmp_path / "killed")
    proc = subprocess.Popen([str(BIN / "snakemake"), "--configfile", str(FAULT), "--cores", "1"], cwd=wd, env=env(),
                            **popen)
    wait_for_line(wd / SLOW_LOG, TRAINING, alive=proc)
    return wd, proc, _wait_for("^python -m dlnpipe train .*gelu-L4-m3-paper-p0", timeout=STUDY_TIMEOUT_S)


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        raise AssertionError("the slow cell finished before it could be killed: give it more steps") from None


def test_killed_train_job_is_repaired_by_rerun(tmp_path, fault_clean):
    fault, clean = FAULT, fault_clean
    wd, proc, pid = _training(tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _kill(pid)
    out, _ = proc.communicate(timeout=STUDY_TIMEOUT_S)
    assert proc.returncode != 0, out
    assert "Error in rule train_cell" in out
    assert not (wd / "results/fault/train/slow/gelu-L4-m3-paper-p0.npz").exists()
    assert not list((wd / "results/fault/train/slow").glob(".*.tmp"))  # no half-written file left behind
    # a plain rerun: the workflow profile (profiles/default, found by Snakemake itself) says rerun-incomplete
    snakemake(wd, "--configfile", str(fault), "--cores", "1")
    a, b = open_tree(clean / "results/fault/cube.zarr"), open_tree(wd / "results/fault/cube.zarr")
    assert sorted(a.children) == sorted(b.children) == ["fast", "slow"]
    for name in a.children:
        xr.testing.assert_identical(a[name].to_dataset(), b[name].to_dataset())


def test_whole_run_killed_then_unlocked_and_rerun(tmp_path, fault_clean):
    """Snakemake itself killed (SIGKILL to its whole process group): its lock stays; `dlnpipe unlock`
    (what `make run` does first) removes it because no Snakemake runs there, and a plain rerun finishes
    with the cube of an uninterrupted run and no duplicated work left behind."""
    fault, clean = FAULT, fault_clean
    wd, proc, _ = _training(tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=STUDY_TIMEOUT_S)
    assert list((wd / ".snakemake/locks").glob("*"))  # the stale lock
    stuck = snakemake(wd, "--configfile", str(fault), "--cores", "1", check=False)
    assert stuck.returncode != 0 and "LockException" in stuck.stdout + stuck.stderr
    out = subprocess.run([str(BIN / "python"), "-m", "dlnpipe", "unlock"], cwd=wd, env=env(), capture_output=True,
                         text=True, check=True)
    assert "removed a stale lock" in out.stdout
    snakemake(wd, "--configfile", str(fault), "--cores", "1")
    a, b = open_tree(clean / "results/fault/cube.zarr"), open_tree(wd / "results/fault/cube.zarr")
    for name in a.children:
        xr.testing.assert_identical(a[name].to_dataset(), b[name].to_dataset())


def test_unlock_leaves_a_live_run_alone(tmp_path):
    """A Snakemake process running in the directory holds its lock: `dlnpipe unlock` keeps it."""
    import shutil

    from dlnpipe.locks import unlock_if_stale

    (tmp_path / ".snakemake/locks").mkdir(parents=True)
    lock = tmp_path / ".snakemake/locks/0.input.lock"
    lock.write_text("results/x\n")
    fake = tmp_path / "bin/snakemake"  # a process whose program is called snakemake, running here
    fake.parent.mkdir()
    shutil.copy("/bin/sleep", fake)
    live = subprocess.Popen([str(fake), "3600"], cwd=tmp_path)  # lives until killed below: no race on any machine
    try:  # Popen returns after the exec: /proc already shows the program and its working directory
        assert unlock_if_stale(tmp_path).startswith("locked by a running Snakemake") and lock.exists()
    finally:
        live.kill()
        live.wait()
    assert unlock_if_stale(tmp_path).startswith("removed a stale lock") and not lock.exists()
    assert unlock_if_stale(tmp_path) == "no lock"


def test_default_config_dry_run(tmp_path):
    wd = workdir(tmp_path)
    out = snakemake(wd, "-n", "--cores", "2")
    assert "train_cell" in out.stdout and "gather_cube" in out.stdout


def test_the_dag_is_built_without_torch(tmp_path):
    """Building the DAG (here: a dry run with `device: auto`, which asks whether the host has a GPU) never
    imports torch: a torch that cannot be imported does not stop it."""
    wd = workdir(tmp_path / "wd")
    block = tmp_path / "block/torch"
    block.mkdir(parents=True)
    (block / "__init__.py").write_text("raise ImportError('torch was imported while the DAG was built')\n")
    cfg = yaml.safe_load(QUICK.read_text())
    cfg["device"] = "auto"
    (wd / "auto.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(wd, "-n", "--cores", "1", "--configfile", "auto.yaml", check=False,
                    extra_env={"PYTHONPATH": str(block.parent)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "results/quick/train" in out.stdout


def test_config_files_layer_by_snakemakes_own_rules(tmp_path):
    """config.yaml is the study unless a --configfile defines experiments (then that file is the whole study,
    named after its study: key or its file); files without experiments and --config values adjust it."""
    wd = workdir(tmp_path / "wd")
    base = yaml.safe_load(QUICK.read_text())  # config.yaml here: a small study (its dry runs are quick)
    base.pop("study")
    (wd / "config.yaml").write_text(yaml.safe_dump(base))

    def dry(*args) -> tuple[set[str], set[str]]:
        """(the studies whose directories the jobs write, the experiments they belong to)"""
        out = snakemake(wd, "-n", "--cores", "1", *args).stdout
        lines = out.splitlines()
        studies = {line.split("results/")[1].split("/")[0] for line in lines if "output: results/" in line}
        return studies, {line.split("exp=")[1].split(",")[0] for line in lines if "wildcards: exp=" in line}

    assert dry() == ({"default"}, set(base["experiments"]))
    assert dry("--config", "study=other") == ({"other"}, set(base["experiments"]))
    (wd / "adjust.yaml").write_text("study: adjusted\ndevice: cpu\n")
    assert dry("--configfile", "adjust.yaml") == ({"adjusted"}, set(base["experiments"]))
    (wd / "mine.yaml").write_text(yaml.safe_dump({**base, "experiments": {"small": base["experiments"]["small"]}}))
    assert dry("--configfile", "mine.yaml") == ({"mine"}, {"small"})


def test_snakefmt_check():
    out = subprocess.run([str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_bad_config_stops_before_any_job(tmp_path):
    wd = workdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(QUICK.read_text().replace("depths: [3]", "depths: [0]", 1))
    out = snakemake(wd, "--configfile", str(bad), "--cores", "1", check=False)
    assert out.returncode != 0
    assert "config error: experiments.small.depths.0: Input should be greater than or equal to 1 (got 0)" in (
        out.stdout + out.stderr)
    assert not (wd / "results").exists()


def test_bad_data_file_stops_before_any_job(tmp_path):
    """A user's data file with a NaN label is read when the config is parsed: one line naming the file
    and what is wrong, and no job runs."""
    wd = workdir(tmp_path / "wd")
    X = np.random.default_rng(0).standard_normal((12, 3))
    y = X @ np.ones(3)
    y[4] = np.nan
    np.savez(wd / "mine.npz", X=X, y=y)
    cfg = yaml.safe_load(QUICK.read_text())
    cfg["experiments"] = {"mine": {**cfg["experiments"]["small"], "data": {"file": "mine.npz"}}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = snakemake(wd, "--configfile", str(path), "--cores", "1", check=False)
    assert out.returncode != 0
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("config error")]
    assert lines == ["config error: experiments.mine.data.file: mine.npz: y has 1 non-finite value(s), first at "
                     "index (4,): np.float64(nan)"], out.stderr[-2000:]
    assert not (wd / "results").exists()


@pytest.mark.parametrize("device,gpu", [("cuda", 1), ("cpu", 0)])
def test_gpu_resource_follows_device(tmp_path, device, gpu):
    """`device: cuda` makes every training and measuring job ask for gpu=1: the local profile caps
    gpu at 1 (one job per GPU) and the slurm profile passes it on to sbatch as --gpus=1."""
    import yaml

    cfg = yaml.safe_load(QUICK.read_text())
    cfg["device"] = device
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    wd = workdir(tmp_path / "wd")
    out = snakemake(wd, "-n", "--configfile", str(path)).stdout  # the workflow profile applies by itself
    jobs = out.split("\nrule ")[1:] + out.split("\nlocalrule ")[1:]
    per_rule = {}
    for job in jobs:
        name = job.split(":", 1)[0]
        per_rule.setdefault(name, set()).add("gpu=1" in job)
    assert per_rule["train_cell"] == {bool(gpu)} and per_rule["measure_sharpness"] == {bool(gpu)}
    assert per_rule["gather_cube"] == {False}
    profile = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())
    assert profile["resources"] == ["gpu=1"]


def test_local_and_cluster_profiles_share_their_defaults():
    """profiles/slurm replaces profiles/default (--workflow-profile): it repeats the shared block."""
    import yaml

    local = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())
    cluster = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    shared = ("keep-going", "rerun-incomplete", "show-failed-logs", "printshellcmds")
    assert {k: local[k] for k in shared} == {k: cluster[k] for k in shared}
    assert local["rerun-incomplete"] is True and cluster["executor"] == "slurm"


def test_snakemake_module_runs_the_study_in_its_own_directory(tmp_path):
    """Another project uses dlnpipe as a Snakemake module (`module dlnpipe: snakefile: ..., config:
    config` and `use rule * from dlnpipe`): the quick study's small experiment runs in that project's
    directory, with that project's config."""
    cfg = yaml.safe_load(QUICK.read_text())
    cfg["experiments"] = {"small": cfg["experiments"]["small"]}
    host = tmp_path / "host"
    host.mkdir()
    (host / "study.yaml").write_text(yaml.safe_dump(cfg))
    (host / "Snakefile").write_text(
        'configfile: "study.yaml"\n\n\n'
        f'module dlnpipe:\n    snakefile:\n        "{ROOT / "Snakefile"}"\n    config:\n        config\n\n\n'
        "use rule * from dlnpipe\n")
    ours = sorted((ROOT / "results").rglob("*")) if (ROOT / "results").exists() else []
    snakemake(host, "--cores", "2")
    tree = open_tree(host / "results/quick/cube.zarr")
    assert sorted(tree.children) == ["small"] and int(tree["small"].to_dataset().valid.sum()) == 12
    assert (host / "results/quick/figures/small/fig1b.png").exists()
    assert (host / "results/quick/bounds/small.md").exists()
    assert (host / "results/mlflow.db").exists()
    assert (sorted((ROOT / "results").rglob("*")) if (ROOT / "results").exists() else []) == ours  # nothing here


def test_figures_without_data_say_so(quick_run, tmp_path):
    """A figure whose networks all diverged says so on each empty panel instead of drawing empty axes."""
    from dlnpipe import figures

    ds = open_tree(quick_run / "results/quick/cube.zarr")["small"].to_dataset().load()
    ds["status"] = ds.status.where(ds.status < 0, Status.DIVERGED)
    for var in ("sharpness", "distance", "loss_train", "loss_test", "hessian_trace", "hessian_trace_minimizer"):
        ds[var] = ds[var] * np.nan
    for name in ("fig1a", "fig1b", "trace", "trace_vs_sharpness"):
        fig = figures.draw(ds, name)
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert any(t.startswith("no converged") for t in texts), (name, texts)


EOS_MINI = {
    "study": "eos_mini", "device": "cpu", "mlflow": {"enabled": False},  # tracking: the quick study's tests
    "experiments": {"eos": {
        "description": "the eos experiment in miniature: phi_t along gd, the central flow and the flow beside it",
        "data": {"n": 20, "d": 3, "noise": 0.5, "seed": 1}, "inits": ["small"], "depths": [3], "widths": [3],
        "scales": [0.3], "runs": [{"lr": 0.45, "steps": 100, "seeds": 1}],  # 2/eta = 4.4, phi_0 about 4.4: at the edge
        "optimizer": ["gd", "central", "flow"], "dtype": "float64", "record_every": 10, "record_sharpness": True,
        "record_eos": True, "figures": ["eos_phi", "eos_central", "eos_balance", "failures"]}}}


def test_eos_experiment_end_to_end(tmp_path):
    """An experiment with record_eos and the central flow beside GD, through every stage: the cube holds φ_t,
    the central flow's trajectories, λ_min and the balancing gaps; its table checks c11–c14 and counts how the
    failed networks ended; its four figures are drawn."""
    from matplotlib.image import imread

    cfg = tmp_path / "eos.yaml"
    cfg.write_text(yaml.safe_dump(EOS_MINI, sort_keys=False))
    wd = workdir(tmp_path / "wd")
    snakemake(wd, "--configfile", str(cfg), "--cores", "2")
    res = wd / "results/eos_mini"
    ds = open_tree(res / "cube.zarr")["eos"].to_dataset().load()
    gd, central = ds.sel(optim="gd"), ds.sel(optim="central")
    phi = gd.traj_gfs_sharpness.squeeze()
    assert phi.notnull().all() and (phi >= float(ds.s_min.squeeze()) * (1 - 1e-6)).all()
    assert central.traj_central_loss.notnull().any() and gd.traj_central_loss.isnull().all()
    np.testing.assert_allclose(central.traj_central_sharpness.isel(step=0), gd.traj_sharpness.isel(step=0), rtol=1e-8)
    assert ds.lambda_min.notnull().all() and ds.balance.notnull().any() and ds.balance_init.notnull().any()
    for along in (gd, central):  # the gaps along the run start at those of the init
        G0 = along.traj_balance.isel(step=0).dropna("layer")
        np.testing.assert_allclose(G0, along.balance_init.dropna("layer"), rtol=1e-12)
    assert ds.sel(optim="flow").traj_balance.isnull().all()
    # how each network ended, in the cube: its status refined against its own optimizer's threshold
    assert ds.failure.attrs["flag_meanings"].split() == [k.meaning for k in FailureKind]
    for label, edge in (("gd", 2.0), ("central", 2.0), ("flow", np.nan)):
        one = ds.sel(optim=label)
        threshold = (edge / one.lr).broadcast_like(one.status).transpose(*one.status.dims).values
        expected = failure_kinds(one.status.values, threshold, one.sharpness.values,
                                 one.lambda_min.values, one.grad_norm_sq.values, (one.loss_train - ds.loss_opt).values)
        np.testing.assert_array_equal(one.failure.values, expected)
    md = (res / "bounds/eos.md").read_text()
    for claim in ("c11", "c12", "c13", "c14"):
        assert f"| {claim} " in md, claim
    table = pd.read_csv(res / "bounds/eos.csv")
    assert {"failed_unstable", "failed_saddle", "failed_slow", "eos_reached", "eos_onset_median"} <= set(table.columns)
    gd_rows = table[table.optim == "gd"]
    assert (gd_rows.eos_sharpening_median.notna()).all()  # every gd trajectory sampled: a slope before any onset
    for fig in EOS_MINI["experiments"]["eos"]["figures"]:
        img = imread(res / f"figures/eos/{fig}.png")
        assert img.ndim == 3 and img.std() > 0.01, fig
