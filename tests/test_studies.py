"""Every study in its own place: results/<study>/ for its files, dlnpipe/<study>/<experiment> for its
MLflow runs, so that a second study in the same checkout never touches the first.

Study A is the quick config (``study: quick``), finished once per session (conftest's ``quick_run``).
Study B (``study: other``) has an experiment named like one of A's with other settings (``small``) and
fewer experiments than A. Both run in one checkout, one after the other and both at once.
"""

import hashlib
import re
import socket
import subprocess
import time

import pytest
import xarray as xr
import yaml
from workflow_utils import BIN, QUICK, STUDY_TIMEOUT_S, copy_study, env, open_tree, snakemake, workdir

pytestmark = pytest.mark.slow


def study_b() -> dict:
    quick = yaml.safe_load(QUICK.read_text())["experiments"]
    small = {**quick["small"], "scales": [0.4], "runs": [{"lr": 0.05, "steps": 300, "seeds": 2}],
             "figures": ["fig1b"], "density": False}
    return {"study": "other", "device": "cpu", "experiments": {"small": small, "traj": quick["traj"]}}


def digests(directory) -> dict[str, str]:
    """sha256 of every file under ``directory`` (relative path -> digest)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def mlflow_runs(db, study: str) -> dict[str, dict[str, tuple]]:
    """Every run of the study's MLflow experiments: experiment -> run id -> (params, metrics, tags)."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    out = {}
    for exp in client.search_experiments(filter_string=f"name LIKE 'dlnpipe/{study}/%'"):
        runs = client.search_runs([exp.experiment_id], max_results=50000)
        out[exp.name] = {r.info.run_id: (r.data.params, r.data.metrics, r.data.tags) for r in runs}
    return out


@pytest.fixture(scope="module")
def b_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("configs") / "b.yaml"
    path.write_text(yaml.safe_dump(study_b(), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def two_studies(quick_run, b_config, tmp_path_factory):
    """Study B run in a copy of A's finished checkout: (checkout, A's file digests, A's MLflow runs, before B)."""
    wd = copy_study(quick_run, tmp_path_factory.mktemp("two") / "wd")
    files, runs = digests(wd / "results/quick"), mlflow_runs(wd / "results/mlflow.db", "quick")
    snakemake(wd, "--configfile", str(b_config), "--cores", "2")
    return wd, files, runs


def test_second_study_leaves_the_first_alone(two_studies, quick_run):
    wd, files, runs = two_studies
    assert sorted(open_tree(wd / "results/other/cube.zarr").children) == ["small", "traj"]
    # every file of A, the cube, tables, figures, logs and intermediates, is there with the same bytes
    assert digests(wd / "results/quick") == files and len(files) > 300
    a, solo = open_tree(wd / "results/quick/cube.zarr"), open_tree(quick_run / "results/quick/cube.zarr")
    assert sorted(a.children) == ["bounds", "optim", "relu", "resid", "small", "traj", "under"]
    for name in a.children:
        xr.testing.assert_identical(a[name].to_dataset(), solo[name].to_dataset())
    # A's MLflow runs keep their ids, params, metrics and tags, and A's experiments gain no run
    assert mlflow_runs(wd / "results/mlflow.db", "quick") == runs
    b = mlflow_runs(wd / "results/mlflow.db", "other")
    assert sorted(b) == ["dlnpipe/other/small", "dlnpipe/other/traj"]
    assert all(tags["dlnpipe.study"] == "other" for exp in b.values() for _, _, tags in exp.values())
    assert len(b["dlnpipe/other/small"]) == 1  # one configuration: one η, one scale
    # A is still finished: rerunning it schedules nothing
    out = snakemake(wd, "-n", "--configfile", str(QUICK), "--cores", "2")
    assert "Nothing to be done" in out.stdout + out.stderr, out.stdout[-2000:]


def test_removed_experiment_removes_only_its_group_and_comes_back_without_retraining(two_studies, tmp_path):
    wd, _, _ = two_studies
    other = digests(wd / "results/other")
    cfg = yaml.safe_load(QUICK.read_text())
    del cfg["experiments"]["traj"]
    fewer = tmp_path / "quick.yaml"  # the same study (its `study:` key), one experiment fewer
    fewer.write_text(yaml.safe_dump(cfg, sort_keys=False))
    snakemake(wd, "--configfile", str(fewer), "--cores", "2")
    assert "traj" not in open_tree(wd / "results/quick/cube.zarr").children
    assert (wd / "results/quick/train/traj").is_dir()  # the intermediate files stay
    assert digests(wd / "results/other") == other  # B's traj group and everything else of B untouched
    back = snakemake(wd, "-n", "--configfile", str(QUICK), "--cores", "2").stdout
    jobs = set(re.findall(r"^(?:local)?rule (\w+):", back, flags=re.M))
    # the group, its tables and figures, the root; the study's MLflow experiments listed again: nothing
    # trained, measured or logged
    assert jobs == {"gather_cube", "cube_root", "compare_bounds", "plot", "mlflow_init", "all"}, jobs
    snakemake(wd, "--configfile", str(QUICK), "--cores", "2")
    assert "traj" in open_tree(wd / "results/quick/cube.zarr").children


def test_two_studies_at_once_give_what_each_gives_alone(quick_run, two_studies, b_config, tmp_path):
    """A (the quick study but its two heaviest experiments, bounds and optim: the same rules again, on the
    suite's critical path) and B started together in one fresh checkout: both finish, each cube equals its
    solo run (A: the session's quick run, group by group; B: the one beside A above), each MLflow experiment
    holds exactly its own study's runs, no tracking job failed. This is also a determinism check of the quick
    study's groups (all seven are held to the stored reference by test_reference and to a SLURM run by
    test_slurm)."""
    wd = workdir(tmp_path / "wd")
    cfg_a = yaml.safe_load(QUICK.read_text())
    for heavy in ("bounds", "optim"):
        del cfg_a["experiments"][heavy]
    a_config = tmp_path / "quick.yaml"
    a_config.write_text(yaml.safe_dump(cfg_a, sort_keys=False))
    procs = [subprocess.Popen([str(BIN / "snakemake"), "--configfile", str(cfg), "--cores", "1"], cwd=wd, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cfg in (a_config, b_config)]
    outs = [p.communicate(timeout=STUDY_TIMEOUT_S)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
        assert "database is locked" not in out and "Error in rule" not in out
    for study, solo in (("quick", quick_run), ("other", two_studies[0])):
        a, b = open_tree(wd / f"results/{study}/cube.zarr"), open_tree(solo / f"results/{study}/cube.zarr")
        assert set(a.children) == (set(cfg_a["experiments"]) if study == "quick" else set(b.children))
        for name in a.children:
            xr.testing.assert_identical(a[name].to_dataset(), b[name].to_dataset())
    from workflow_utils import configurations

    for study, cfg in (("quick", a_config), ("other", b_config)):
        runs = mlflow_runs(wd / "results/mlflow.db", study)
        counts = {name.removeprefix(f"dlnpipe/{study}/"): sum(t.get("dlnpipe.role") == "configuration"
                                                                for _, _, t in r.values()) for name, r in runs.items()}
        assert counts == configurations(cfg), study
        assert all(t["dlnpipe.study"] == study for r in runs.values() for _, _, t in r.values())


def test_an_old_results_layout_stops_the_run_with_one_line(tmp_path, b_config):
    wd = workdir(tmp_path / "wd")
    (wd / "results/cube.zarr").mkdir(parents=True)
    (wd / "results/train/fig1").mkdir(parents=True)
    out = snakemake(wd, "-n", "--configfile", str(b_config), check=False)
    assert out.returncode != 0
    line = next(x for x in (out.stdout + out.stderr).splitlines() if "holds a study written before" in x)
    assert "results/cube.zarr results/train" in line and "mv results/cube.zarr results/train results/default/" in line


def test_unlock_refuses_a_lock_held_from_another_host(tmp_path):
    from dlnpipe import locks

    (tmp_path / ".snakemake/locks").mkdir(parents=True)
    lock = tmp_path / ".snakemake/locks/0.output.lock"
    lock.write_text("results/quick/cube.zarr/zarr.json\n")
    here = locks.record_holder(tmp_path, study="quick")  # this process: on this host, not a Snakemake
    remote = here.with_name("login2.12345.json")
    remote.write_text('{"host": "login2", "pid": 12345, "study": "bounds_full", "started": 0}')
    assert socket.gethostname() != "login2"
    said = locks.unlock_if_stale(tmp_path)
    assert said.startswith("locked by a Snakemake run on another host: login2 (pid 12345, study bounds_full)")
    assert "--other-hosts" in said and lock.exists() and remote.exists()
    out = subprocess.run([str(BIN / "python"), "-m", "dlnpipe", "unlock", str(tmp_path)], capture_output=True,
                         text=True, env=env(), check=True)
    assert "another host" in out.stdout and lock.exists()
    said = locks.unlock_if_stale(tmp_path, other_hosts=True)  # asked explicitly: that run is known to be gone
    assert said.startswith("removed a stale lock (1 files)") and not lock.exists()
    assert locks.records(tmp_path) == []


def test_a_run_records_where_it_holds_the_lock_and_removes_the_record(tmp_path, b_config):
    """While the workflow runs, .snakemake/dlnpipe-holders names its host and pid; when it ends, nothing."""
    wd = workdir(tmp_path / "wd")
    cfg = yaml.safe_load(b_config.read_text())
    cfg["experiments"] = {"small": cfg["experiments"]["small"]}
    cfg["mlflow"] = {"enabled": False}
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(cfg))
    from dlnpipe.locks import HOLDERS

    proc = subprocess.Popen([str(BIN / "snakemake"), "--configfile", str(path), "--cores", "1"], cwd=wd, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = set()
    while proc.poll() is None:  # the record lives from the start of the run (after the DAG) to its end
        seen |= {p.name for p in (wd / HOLDERS).glob("*.json")}
        time.sleep(0.05)
    assert proc.returncode == 0
    assert seen == {f"{socket.gethostname()}.{proc.pid}.json"}
    assert not list((wd / HOLDERS).glob("*.json"))


def test_make_ui_lists_one_study_when_asked(two_studies):
    """`make ui` lists every study's experiments; `make ui STUDY=other` (ui-links --study) only that study's."""
    wd, _, _ = two_studies
    uri = f"sqlite:///{wd / 'results/mlflow.db'}"

    def listed(*extra) -> list[str]:
        out = subprocess.run([str(BIN / "python"), "-m", "dlnpipe", "ui-links", "--uri", uri, "--base", "http://h:1",
                              *extra], capture_output=True, text=True, env=env(), check=True).stdout
        return re.findall(r"^  (dlnpipe/\S+) \(", out, flags=re.M)

    assert listed("--study", "other") == ["dlnpipe/other/small", "dlnpipe/other/traj"]
    every = listed()
    assert set(every) >= {"dlnpipe/other/small", "dlnpipe/quick/small", "dlnpipe/quick/optim"} and len(every) == 9


def test_store_lock_admits_one_writer_at_a_time(tmp_path):
    """Two studies' tracking jobs take turns on one SQLite store: while one holds the lock, another
    process cannot take it."""
    from dlnpipe.tracking import store_lock

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'a')\n"
             "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
             "except BlockingIOError:\n    print('taken')")
    lock = str(tmp_path / "mlflow.db.lock")
    with store_lock(uri):
        held = subprocess.run([str(BIN / "python"), "-c", probe, lock], capture_output=True, text=True).stdout.strip()
    after = subprocess.run([str(BIN / "python"), "-c", probe, lock], capture_output=True, text=True).stdout.strip()
    assert (held, after) == ("taken", "free")
