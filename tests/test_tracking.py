"""MLflow tracking through the real workflow: a SQLite store read back through a real ``mlflow server``
(REST API) and ``mlflow ui`` in headless Chromium; idempotent reruns; a tracking server that is down."""

import json
import shutil
import urllib.request
from pathlib import Path

import pytest
import yaml
from workflow_utils import (
    QUICK,
    SERVER_TIMEOUT_S,
    MlflowServer,
    configurations,
    copy_study,
    free_port,
    snakemake,
    workdir,
)

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# The longest the UI test waits for a page or what it shows: a bound for a hang, not a speed. The UI
# shows the runs table within about 12 s here (2-core AMD EPYC, AVX2, both cores busy), so 180 s also
# covers a machine three times slower under load.
UI_WAIT_S = 180


def rest(url: str, endpoint: str, body: dict) -> dict:
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/{endpoint}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=SERVER_TIMEOUT_S) as r:
        return json.loads(r.read())


def search_runs(url: str, experiment_id: str, filter_string: str = "") -> list[dict]:
    runs, token = [], None
    while True:
        body = {"experiment_ids": [experiment_id], "filter": filter_string, "max_results": 1000}
        if token:
            body["page_token"] = token
        page = rest(url, "runs/search", body)
        runs += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            return runs


def experiments(url: str) -> dict[str, str]:
    page = rest(url, "experiments/search", {"max_results": 1000})
    return {e["name"]: e["experiment_id"] for e in page["experiments"]}


def count_runs(url: str, study: str = "quick") -> dict[str, int]:
    """Configuration runs per experiment of ``study`` (its MLflow experiments dlnpipe/<study>/<experiment>)."""
    prefix = f"dlnpipe/{study}/"
    return {name.removeprefix(prefix): len(search_runs(url, eid, "tags.`dlnpipe.role` = 'configuration'"))
            for name, eid in experiments(url).items() if name.startswith(prefix)}


def test_every_configuration_is_a_run(quick_run):
    db = quick_run / "results/mlflow.db"
    expected = configurations(QUICK)
    with MlflowServer(db) as server:
        assert count_runs(server.url) == expected
        exps = experiments(server.url)
        assert len(search_runs(server.url, exps["Default"])) == 0  # nothing mis-filed under "Default"
        runs = search_runs(server.url, exps["dlnpipe/quick/small"], "tags.`dlnpipe.role` = 'configuration'")
        run = runs[0]
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert {"init", "depth", "width", "kappa", "lr", "scale", "steps", "seeds"} <= set(params)
        assert params["init"] == "small" and params["depth"] == "3" and params["seeds"] == "3"
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        for key in ("frac_converged", "frac_failed", "frac_diverged", "loss_train_median", "distance_median",
                    "s_min", "eta_c", "hessian_trace_median", "hessian_trace_init_median", "trace_min"):
            assert key in metrics, key
        assert abs(metrics["frac_converged"] + metrics["frac_failed"] + metrics["frac_diverged"] - 1) < 1e-12
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        # top-level runs (no parent to expand in the UI), the cell as a tag and a param to group by
        assert tags["dlnpipe.cell"] == "small-L3-m3-paper" and "mlflow.parentRunId" not in tags
        assert params["cell"] == "small-L3-m3-paper" and params["optimizer"] == "gd"
        assert params["train_path"] == "compiled"  # GD through the compiled linear kernel
        assert tags["dlnpipe.cube"].endswith("results/quick/cube.zarr") and tags["dlnpipe.git_revision"]
        assert tags["dlnpipe.study"] == "quick"
        # median trajectories are step metrics
        hist = urllib.request.urlopen(f"{server.url}/api/2.0/mlflow/metrics/get-history?run_id="
                                      f"{run['info']['run_id']}&metric_key=traj_loss_train_median").read()
        steps = [m["step"] for m in json.loads(hist)["metrics"]]
        assert len(steps) > 5 and steps == sorted(steps)
        # the per-seed table is an artifact
        art = json.loads(urllib.request.urlopen(
            f"{server.url}/api/2.0/mlflow/artifacts/list?run_id={run['info']['run_id']}").read())
        assert [f["path"] for f in art["files"]] == ["networks.csv"]
        # the statistics match the cube's networks
        conv = [r for r in runs if {p["key"]: p["value"] for p in r["data"]["params"]}["lr"] == "0.1"]
        assert conv and all("sharpness_median" in {m["key"] for m in r["data"]["metrics"]} for r in conv)


def test_rerun_and_forced_cell_keep_one_run_per_configuration(quick_run, tmp_path):
    """A moved study logs into its own store; a forced retrain of a cell relogs it only if its results changed
    (bit for bit the same: its runs are kept, ids and all; else replaced by new ones), and never leaves two
    runs of one configuration."""
    wd = copy_study(quick_run, tmp_path / "wd")
    db = wd / "results/mlflow.db"
    expected = configurations(QUICK)
    out = snakemake(wd, "--configfile", str(QUICK), "--cores", "2")
    assert "Nothing to be done" in out.stdout + out.stderr
    marker = wd / "results/quick/mlflow/logged/small.json"
    assert json.loads(marker.read_text())["tracking_uri"] == f"sqlite:///{quick_run / 'results/mlflow.db'}"
    before = json.loads(marker.read_text())["cells"]["small-L3-m3-paper"]
    snakemake(wd, "--configfile", str(QUICK), "--cores", "2",
              "--forcerun", "results/quick/train/small/small-L3-m3-paper-p0.npz")
    after = json.loads(marker.read_text())
    assert after["tracking_uri"] == f"sqlite:///{db}"  # the moved study logs into its own store
    cell = after["cells"]["small-L3-m3-paper"]
    assert len(cell["runs"]) == len(before["runs"])  # the cell's configuration runs, one each
    assert cell["runs"] == before["runs"] if cell["kept"] else not set(cell["runs"]) & set(before["runs"])
    with MlflowServer(db) as server:
        assert count_runs(server.url) == expected


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is installed by .ci/run")
def test_make_ui_links_open_on_the_configurations_and_their_metrics(quick_run):
    """`make ui` on a finished quick study prints each experiment's pages. In a fresh headless Chromium (whose
    sidebar would open in GenAI mode), the comparison page it prints for dlnpipe/quick/small shows every
    configuration run with its params and metrics, and its runs page lands on the model-training view with
    rows named by what tells them apart (lr=0.1 s=0.3) and the key metrics as columns: nothing to click."""
    import os
    import re
    import signal
    import subprocess
    import time

    from playwright.sync_api import sync_playwright
    from workflow_utils import ROOT, env, wait_http

    shutil.copy(ROOT / "Makefile", quick_run / "Makefile")
    port = free_port()
    proc = subprocess.Popen(["make", "-o", f"{ROOT}/.venv/.installed", "ui", f"UI_PORT={port}", f"VENV={ROOT}/.venv"],
                            cwd=quick_run, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("mlflow ui"):  # dlnpipe ui prints the server's command after the links
                break
        printed = "".join(lines)
        found = re.search(r"dlnpipe/quick/small \((\d+) configurations\)\n\s+runs:\s+(\S+)\n\s+compare:\s+(\S+)",
                          printed)
        assert found, printed
        n, runs, compare = int(found.group(1)), found.group(2), found.group(3)
        assert n == configurations(QUICK)["small"] and runs.startswith(f"http://127.0.0.1:{port}/#/experiments/")
        wait_http(f"http://127.0.0.1:{port}/health", timeout=UI_WAIT_S)
        names = [f"lr={lr} s={s}" for lr in ("0.1", "0.8") for s in ("0.3", "0.5")]  # what tells them apart
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(UI_WAIT_S * 1000)
            page.goto(compare)
            page.get_by_text("Run details").first.wait_for()
            page.screenshot(path=str(quick_run / "results/quick/mlflow-ui.png"))
            keys = ("frac_converged", "sharpness_median", "sharpness_ratio_median", "s_min", "threshold", "lr", "scale")
            text = ""
            page.mouse.move(600, 700)
            deadline = time.monotonic() + UI_WAIT_S
            while time.monotonic() < deadline:  # the table of params and metrics fills the page as a reader scrolls
                text += page.inner_text("body")
                if all(key in text for key in keys) and all(name in text for name in names):
                    break
                page.mouse.wheel(0, 400)
                page.wait_for_timeout(150)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})  # a fresh page, as from the terminal
            page.set_default_timeout(UI_WAIT_S * 1000)
            page.goto(runs)  # the training-runs table: one row per configuration
            page.get_by_text(f"{n} matching runs").first.wait_for()
            for name in names:  # the count shows before the rows: wait for each row's run name itself
                page.get_by_text(name, exact=True).first.wait_for()
            page.get_by_text("sharpness_ratio_median").first.wait_for()  # the key metrics are columns, no click
            page.screenshot(path=str(quick_run / "results/quick/mlflow-runs.png"))
            table = page.inner_text("body")
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert re.search(rf"Comparing\s+{n}\s+Runs", text, re.I), text[text.find("dlnpipe/quick/small"):][:300]
    assert f"{n} matching runs" in table
    # the sidebar in its model-training mode (Runs, Models, Model registry), not GenAI's (Judges, Prompts, ...)
    assert "Model registry" in table and "Judges" not in table and "Prompts" not in table, table[:1500]
    for column in ("lr", "scale", "sharpness_ratio_median", "frac_converged", "sharpness_median", "threshold"):
        assert f"\n{column}\n" in table, column  # a column header of the landing table
    assert all(name in text and name in table for name in names), text[:3000]
    for key in keys:
        assert key in text, key


def test_tracking_server_down_then_up(tmp_path):
    wd = workdir(tmp_path / "wd")
    cfg = tmp_path / "one.yaml"
    quick = yaml.safe_load(QUICK.read_text())
    cfg.write_text(yaml.safe_dump({"device": "cpu", "experiments": {"small": quick["experiments"]["small"]}}))
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    out = snakemake(wd, "--configfile", str(cfg), "--cores", "2", "--keep-going", check=False,
                    extra_env={"MLFLOW_TRACKING_URI": uri})
    assert out.returncode != 0
    log = (wd / "results/one/logs/mlflow_init/mlflow_init.log").read_text()
    assert f"MLflow tracking server {uri} is not reachable" in log and "run the workflow again" in log
    assert "Error in rule mlflow_init" in out.stdout + out.stderr
    # the job's one-line cause reaches the terminal, with its log's path
    assert f"error: tracking error: MLflow tracking server {uri} is not reachable" in out.stderr
    assert "(log: results/one/logs/mlflow_init/mlflow_init.log)" in out.stderr
    # the training results (and, with --keep-going, everything else) are on disk regardless of tracking
    one = wd / "results/one"  # the study's directory, after its config file's name
    assert (one / "train/small/small-L3-m3-paper-p0.npz").exists()
    assert (one / "measure/small/small-L3-m3-paper-p0.npz").exists()
    assert (one / "cube.zarr/zarr.json").exists() and (one / "figures/small/fig1b.png").exists()
    assert (one / "cube.zarr/small/zarr.json").exists()
    assert not (one / "mlflow/logged/small.json").exists()
    with MlflowServer(tmp_path / "server.db", port=port) as server:
        out = snakemake(wd, "--configfile", str(cfg), "--cores", "2", extra_env={"MLFLOW_TRACKING_URI": uri})
        assert "train_cell" not in out.stdout.split("Job stats:")[-1].split("Reasons")[0]  # nothing retrained
        assert count_runs(server.url, "one") == {"small": 4}
