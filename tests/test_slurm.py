"""Cluster submission on a real single-node SLURM cluster (Debian's slurm-wlm + munge).

The quick config through `--workflow-profile profiles/slurm` gives the local run's cube, every job
went through `sbatch` (SLURM logs, `scontrol`); a train_cell job killed by `scancel` is reported
and a rerun finishes the study without redoing the cells that had finished.

The cluster is started by tests/cluster/start-slurm.sh (root). Without slurm-wlm the tests skip,
unless DLNPIPE_REQUIRE_SLURM=1 (set by .ci/run), which turns a missing cluster into a failure.
"""

import os
import re
import shutil
import subprocess
import time

import pytest
import xarray as xr
from workflow_utils import BIN, QUICK, ROOT, STUDY_TIMEOUT_S, env, open_tree, snakemake, wait_for_line, workdir

pytestmark = pytest.mark.slow
PROFILE = ["--workflow-profile", "profiles/slurm"]
# test-only plugin settings: poll soon after submission; no account exists on this cluster
FAST = ["--slurm-init-seconds-before-status-checks", "2", "--slurm-no-account"]


@pytest.fixture(scope="module")
def cluster():
    required = os.environ.get("DLNPIPE_REQUIRE_SLURM") == "1"
    if shutil.which("sbatch") is None or shutil.which("slurmctld") is None:
        if required:
            pytest.fail("DLNPIPE_REQUIRE_SLURM=1 but slurm-wlm is not installed")
        pytest.skip("slurm-wlm is not installed (apt-get install slurm-wlm munge)")
    out = subprocess.run([str(ROOT / "tests/cluster/start-slurm.sh")], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        if required:
            pytest.fail(f"could not start the SLURM cluster:\n{out.stdout}\n{out.stderr}")
        pytest.skip(f"could not start the SLURM cluster: {out.stderr.strip()[-300:]}")
    # the tests read finished jobs' records (scontrol) after a whole study: slurmctld must keep them
    # longer than any machine takes (start-slurm.sh sets a day; SLURM's default, 300 s, is not enough)
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    age = re.search(r"MinJobAge\s*=\s*(\d+)", config)
    assert age and int(age.group(1)) >= 86400, f"slurmctld forgets finished jobs too soon: {age and age.group(0)}"
    return True


def slurm_logs(wd, rule: str) -> dict[str, list[int]]:
    """Job ids of the plugin's SLURM logs per wildcard folder: .snakemake/slurm_logs/rule_<rule>/<wc>/<id>.log"""
    out: dict[str, list[int]] = {}
    base = wd / ".snakemake/slurm_logs" / f"rule_{rule}"
    for f in sorted(base.rglob("*.log")):  # a rule without wildcards logs in its own folder
        out.setdefault(str(f.parent.relative_to(base)), []).append(int(f.stem))
    return out


def job_state(job_id: int) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


def test_quick_study_on_slurm_equals_local_run(cluster, quick_run, tmp_path):
    """The quick study but its optimizer and bounds experiments (the same stages and rules again: they only
    add jobs to a test that is sbatch-bound) on the cluster."""
    import yaml

    cfg = yaml.safe_load(QUICK.read_text())
    for heavy in ("optim", "bounds"):
        del cfg["experiments"][heavy]
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(cfg))
    wd = workdir(tmp_path / "wd")
    out = snakemake(wd, *PROFILE, *FAST, "--configfile", str(study))
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", out.stdout + out.stderr)
    # the cube equals the local run's, group by group (same networks, seeds, steps: bit for bit)
    local, cluster_cube = open_tree(quick_run / "results/quick/cube.zarr"), open_tree(wd / "results/quick/cube.zarr")
    assert sorted(cluster_cube.children) == sorted(cfg["experiments"])
    for name in cluster_cube.children:
        xr.testing.assert_identical(local[name].to_dataset(), cluster_cube[name].to_dataset())
    # every cell's training and measuring job was an sbatch job: its log names a job id that
    # slurmctld knows, ran on the node in this workflow's directory and completed
    cells = {f.stem for f in (quick_run / "results/quick/train").rglob("*.npz") if f.parent.name in cfg["experiments"]}
    for rule in ("make_dataset", "train_cell", "measure_sharpness", "gather_cube", "plot"):
        logs = slurm_logs(wd, rule)
        assert logs, f"no SLURM log for rule {rule}"
        if rule in ("train_cell", "measure_sharpness"):
            assert {name.split("_", 1)[1] for name in logs} == cells
        for ids in logs.values():
            state = job_state(ids[-1])
            assert state.get("JobState") == "COMPLETED", state
            assert state.get("WorkDir") == str(wd)
            assert state.get("Comment", "").startswith(f"rule_{rule}")
    n_logs = sum(len(ids) for r in ("make_dataset", "train_cell", "measure_sharpness", "gather_cube",
                                     "cube_root", "compare_bounds", "plot") for ids in slurm_logs(wd, r).values())
    assert len(submitted) == n_logs  # one sbatch submission per job, each with its log
    log_text = next(iter((wd / ".snakemake/slurm_logs/rule_train_cell").rglob("*.log"))).read_text()
    assert "--executor slurm-jobstep" in log_text and "rule train_cell" in log_text
    # MLflow logging ran on the submitting host (local rules): no SLURM job for it
    assert not (wd / ".snakemake/slurm_logs/rule_track_experiment").exists()
    assert (wd / "results/mlflow.db").exists()


def _slurm_job(comment_part: str, timeout: float) -> int:
    """Id of the running SLURM job whose comment (rule and wildcards) contains ``comment_part``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%k"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            job_id, state, comment = line.split("|", 2)
            if comment_part in comment and state == "RUNNING":
                return int(job_id)
        time.sleep(0.3)
    raise AssertionError(f"no running SLURM job with {comment_part!r} in its comment within {timeout} s")


def test_scancelled_cell_is_reported_and_rerun_completes(cluster, tmp_path):
    fault = ROOT / "tests/data/fault.yaml"
    wd = workdir(tmp_path)
    proc = subprocess.Popen([str(BIN / "snakemake"), *PROFILE, *FAST, "--configfile", str(fault)], cwd=wd,
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job = _slurm_job("rule_train_cell_wildcards_slow", timeout=STUDY_TIMEOUT_S)
    # the training command has started on the node and trains (for seconds): cancel it mid-training
    log = wd / "results/fault/logs/train_cell/slow/gelu-L4-m3-paper-p0.log"
    wait_for_line(log, "cell slow/gelu-L4-m3-paper-p0: 4 networks", alive=proc)
    subprocess.run(["scancel", str(job)], check=True)
    out, _ = proc.communicate(timeout=STUDY_TIMEOUT_S)
    assert proc.returncode != 0, out
    assert "Error in rule train_cell" in out and f"SLURM-job '{job}' failed" in out, out[-3000:]
    assert "CANCELLED" in out
    assert not (wd / "results/fault/train/slow/gelu-L4-m3-paper-p0.npz").exists()
    # keep-going: the other cell finished; note its files to show the rerun leaves them alone
    done = sorted((wd / "results").rglob("fast/*.npz"))
    assert [p.parent.parent.name for p in done] == ["data", "measure", "train"]
    before = {p: p.stat().st_mtime_ns for p in done}

    rerun = snakemake(wd, *PROFILE, *FAST, "--configfile", str(fault))
    text = rerun.stdout + rerun.stderr
    assert re.search(r"rule train_cell:\s*\n\s*input: results/fault/data/slow/", text)
    # only the killed cell (and what depends on it) runs again
    assert "output: results/fault/train/fast/" not in text and "output: results/fault/measure/fast/" not in text
    assert {p: p.stat().st_mtime_ns for p in done} == before  # finished cells are not redone
    assert len(slurm_logs(wd, "train_cell")["fast_small-L2-m3-paper-p0"]) == 1  # one sbatch job ever
    assert len(slurm_logs(wd, "train_cell")["slow_gelu-L4-m3-paper-p0"]) == 2  # the killed one and its rerun
    tree = open_tree(wd / "results/fault/cube.zarr")
    assert int((tree["slow"].status >= 0).sum()) == 4
