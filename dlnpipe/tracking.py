"""MLflow runs for every training configuration, logged after a cell's results exist.

* one MLflow experiment per study experiment (``<prefix><study>/<name>``: one store serves every study,
  each in experiments of its own), created once, before any job logs, by :func:`init` (concurrent
  creation of a fresh SQLite database, or of one experiment by two writers, crashes or files runs
  under "Default");
* writers of one SQLite store take turns (:func:`store_lock`): two studies' tracking jobs may run at
  once, and SQLite admits one writer, so an overlap past its busy timeout fails with "database is
  locked";
* one top-level run per training configuration (init, depth, width, dataset, optimizer setting, η, s):
  every grid value as a param, the across-seed statistics of the final metrics as metrics, the
  median trajectories as step metrics, the per-seed table as an artifact, and the cell id (tag
  ``dlnpipe.cell``: the runs of one job, to group by in the UI), git revision and cube path as tags.
  Top-level rather than nested under a run per cell: MLflow's runs table shows nested runs only
  after their parent row is expanded, one click per cell, and a parent run has no metrics to
  compare; flat, every configuration is a row with its params and metrics, and grouping by the
  cell tag gives the nesting back when wanted;
* one job per experiment (:func:`log_cells`: one client, one lock), which relogs only the cells whose
  results changed: every run carries the digest of the results it was logged from (tag
  ``dlnpipe.fingerprint``), a cell whose runs all carry its current digest keeps them, ids and all;
  any other cell's runs are deleted and logged afresh, so a rerun replaces them.

Only the workflow's local rules (:mod:`dlnpipe.stages.track`) call this module: cluster jobs never
open the tracking store.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from dlnpipe import steppers
from dlnpipe.status import Status, TrainPath

log = logging.getLogger(__name__)

CELL_TAG = "dlnpipe.cell"
FINGERPRINT_TAG = "dlnpipe.fingerprint"  # the digest of the results a run was logged from
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# The runs table a researcher lands on (make ui's links): MLflow 3.17 reads a view state from the experiment
# tag mlflow.sharedViewState.<key> when the page's URL says viewStateShareKey=<key> (its "share view"), and
# the sidebar's mode from ?workflowType= (otherwise a fresh browser opens in GenAI mode, whatever the
# experiment's mlflow.experimentKind says: the sidebar's mode decides the experiment's kind in 3.17).
VIEW_KEY = "dlnpipe"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
KEY_METRICS = ("sharpness_ratio_median", "frac_converged", "sharpness_median", "threshold", "s_min",
               "frac_diverged")
# A configuration's grid coordinates, as (param, label in a run name); lr and s name every run.
AXES = (("init", ""), ("depth", "L="), ("width", "m="), ("data", ""), ("optim", ""), ("lr", "lr="), ("scale", "s="))


def configuration_axes(exp_cfg: dict) -> list[str]:
    """The grid coordinates that tell an experiment's configurations apart: those with more than one value
    (init, depth, width, dataset, optimizer setting), and always η and s."""
    from dlnpipe.config import ExperimentConfig

    exp = ExperimentConfig.model_validate(exp_cfg)
    sizes = {"init": len(exp.inits), "depth": len(exp.depths), "width": len(exp.widths),
             "data": len(exp.data.points()), "optim": len(exp.optim_points())}
    return [axis for axis, _ in AXES if sizes.get(axis, 2) > 1]


def run_name(axes: list[str], values: dict) -> str:
    """A configuration run's name: its value on each axis that varies, e.g. ``lr=0.02 s=0.31``."""
    labels = dict(AXES)
    return " ".join(f"{labels[a]}{values[a]:g}" if isinstance(values[a], float) else f"{labels[a]}{values[a]}"
                    for a in axes)


def table_view(axes: list[str]) -> str:
    """The runs table's view state (JSON, MLflow's shared-view format): the configuration's coordinates
    and the key metrics as columns, in that order, sorted by η."""
    import json

    columns = [f"params.`{a}`" for a in axes] + [f"metrics.`{m}`" for m in KEY_METRICS]
    return json.dumps({"selectedColumns": columns, "columnOrder": columns, "orderByKey": "params.`lr`",
                       "orderByAsc": True})


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be reached; the training results stay on disk."""


def tracking_uri(configured: str | None = None, results: str | Path = "results") -> str:
    """MLFLOW_TRACKING_URI, else the configured URI, else SQLite at ``<results>/mlflow.db``.

    The default is relative to the working directory (so that a moved study does not look like a new
    tracking target); :func:`absolute` turns it into the absolute URI that MLflow is given.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if configured:
        return configured
    return f"sqlite:///{Path(results) / 'mlflow.db'}"


def absolute(uri: str) -> str:
    """sqlite:///relative/path -> sqlite:////absolute/path; other URIs unchanged."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def check_reachable(uri: str, *, timeout: float = 5.0) -> None:
    """Fail fast, with one clear message, when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is not reachable ({getattr(exc, 'reason', exc)}); the training "
            f"results are kept in the study's results/<study>/train and measure: start the server (or unset "
            f"MLFLOW_TRACKING_URI) and run the workflow again to log them") from None


def _client(uri: str):
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    from mlflow.tracking import MlflowClient

    check_reachable(uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


@contextlib.contextmanager
def store_lock(uri: str):
    """Exclusive use of a SQLite store (``<db>.lock``, an flock) while the block writes; other URIs: no lock
    (a tracking server serialises its own writes)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock = Path(uri[len("sqlite:///"):] + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def init(uri: str, names: list[str], *, artifacts: str | Path, views: dict[str, str] | None = None) -> dict:
    """Create the store (SQLite: the file and its schema) and one MLflow experiment per name, once; ``views``
    (name -> :func:`table_view`) set each experiment's runs-table view. Returns {"uri": the absolute tracking
    URI, "experiments": name -> experiment id}."""
    uri = absolute(uri)
    with store_lock(uri):
        client = _client(uri)
        ids = _init(uri, client, names, artifacts)
        for name, view in (views or {}).items():
            client.set_experiment_tag(ids["experiments"][name], VIEW_TAG, view)
        return ids


def _init(uri: str, client, names: list[str], artifacts: str | Path) -> dict:
    ids = {}
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            location = None
            if not uri.startswith(("http://", "https://")):
                location = (Path(artifacts).resolve() / name.replace("/", "_")).as_uri()
            # "custom_model_development": the UI opens on the training-runs view, not the GenAI one
            ids[name] = client.create_experiment(name, artifact_location=location,
                                                 tags={"mlflow.experimentKind": "custom_model_development"})
        else:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            ids[name] = exp.experiment_id
    log.info("MLflow at %s: experiments %s", uri, ids)
    return {"uri": uri, "experiments": ids}


COMPARE_MAX = 120  # ui_links: a comparison page for experiments with at most this many configurations


def ui_links(uri: str, base: str, *, prefix: str = "dlnpipe/") -> list[dict]:
    """Where a researcher lands in the MLflow UI served at ``base``, per study experiment in the store:
    ``runs``, its training-runs table (a row per configuration; metric columns are added with
    "Columns"), and ``compare``, MLflow's comparison of all its configuration runs (a parallel-coordinates
    plot of the grid against a metric, and every param and metric of every configuration side by
    side, nothing to click), when it has at most :data:`COMPARE_MAX` of them. Both open where they
    should whatever the sidebar's GenAI / Model training switch says."""
    import json
    import urllib.parse

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=absolute(uri))
    out = []
    for exp in client.search_experiments(filter_string=f"name LIKE '{prefix}%'", max_results=1000):
        runs = client.search_runs([exp.experiment_id], "tags.`dlnpipe.role` = 'configuration'", max_results=50000,
                                  order_by=["attributes.run_name ASC"])
        view = f"viewStateShareKey={VIEW_KEY}&" if VIEW_TAG in exp.tags else ""
        page = f"{base.rstrip('/')}/#/experiments/{exp.experiment_id}/runs"
        link = {"name": exp.name, "configurations": len(runs), "compare": None,
                "runs": f"{page}?{view}workflowType=machine_learning"}
        if 0 < len(runs) <= COMPARE_MAX:
            ids = json.dumps([r.info.run_id for r in runs], separators=(",", ":"))
            link["compare"] = (f"{base.rstrip('/')}/#/compare-runs?runs={urllib.parse.quote(ids)}"
                               f"&experiments={urllib.parse.quote(json.dumps([exp.experiment_id]))}"
                               "&workflowType=machine_learning")
        out.append(link)
    return sorted(out, key=lambda link: link["name"])


def _quantile_metrics(prefix: str, values: np.ndarray) -> dict[str, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {}
    q = np.quantile(v, QUANTILES)
    return {f"{prefix}_q{int(p * 100):02d}" if p != 0.5 else f"{prefix}_median": float(x) for p, x in zip(QUANTILES, q)}


def _dataset_info(found: dict, data: np.ndarray, key: str, default) -> list:
    """``meta[key]`` of each network's dataset (``default`` where the dataset is not known)."""
    return [found[k].meta.get(key, default) if found[k] is not None else default for k in data]


def configurations(parts: list[tuple[dict, dict, dict]], datasets: dict | None = None) -> pd.DataFrame:
    """All networks of a cell (its parts concatenated), one row each, with their measurements;
    ``datasets`` (data id -> Dataset) gives each network's κ, spectrum and w* direction."""
    frames = []
    for spec, train, measure in parts:
        cell = spec["cell"]
        data = train["data"]  # each network's data id
        found = {k: (datasets or {}).get(k) for k in set(data)}
        info = functools.partial(_dataset_info, found, data)
        frames.append(pd.DataFrame({
            "init": cell["init"], "depth": cell["depth"], "width": cell["width"], "data": data,
            "kappa": [np.nan if v is None else float(v) for v in info("kappa_target", cell["kappa"])],
            "spectrum": info("spectrum", cell.get("spectrum", "")), "wstar": info("wstar", cell.get("wstar", "")),
            "lr": train["lr"], "scale": train["scale"], "seed_index": train["seed_index"], "seed": train["seed"],
            "steps": train["steps"], "status": train["status"], "diverged_step": train["diverged_step"],
            "train_path": [TrainPath(int(v)).meaning for v in train["train_path"]],
            "sharpness_converged": measure["sharpness_converged"],
            "loss_train": train["loss_train"], "loss_test": train["loss_test"], "distance": train["distance"],
            "sharpness": measure["sharpness_topk"][:, 0], "sharpness_exact": measure["sharpness_exact"],
            "sharpness_init": measure["sharpness_init"], "hessian_trace": measure["hessian_trace"],
            "hessian_trace_init": measure["hessian_trace_init"],
            "hessian_trace_minimizer": measure["hessian_trace_minimizer"], "row": np.arange(len(train["lr"])),
            "part": cell["part"],
            "optim": train.get("optim", np.full(len(train["lr"]), cell.get("optimizer", steppers.DEFAULT))),
            **{k: src.get(k, np.full(len(train["lr"]), np.nan)) for src, keys in (
                (measure, ("sharpness_precond", "sharpness_avg")), (train, ("loss_train_avg", "loss_test_avg")))
               for k in keys}}))
    return pd.concat(frames, ignore_index=True)


def log_cells(uri: str, name: str, cells: list[dict], *, tags: dict) -> dict:
    """Log an experiment's cells in one client, under one lock of the store. Each cell is a dict: ``cell`` (its
    id, without part), ``parts`` (spec, train arrays, measure arrays), ``theory`` (data id -> bounds of the
    cell's depth on that dataset), ``datasets`` and ``fingerprint`` (a digest of its results,
    :func:`dlnpipe.files.fingerprint`). A cell whose runs all carry its fingerprint is untouched: its runs
    are kept, ids and all; any other has its runs replaced by fresh ones, a top-level run per training
    configuration. ``tags`` go on every new run. Returns {"tracking_uri", "experiment_id", "cells": cell id ->
    {"runs": its run ids (sorted), "replaced": old runs deleted, "kept": whether its runs were kept}}."""
    uri = absolute(uri)
    with store_lock(uri):
        client = _client(uri)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise TrackingUnavailable(f"MLflow experiment {name!r} does not exist at {uri}: the mlflow_init rule "
                                      "creates it before any cell logs")
        found: dict[str, list] = {}
        for run in client.search_runs([exp.experiment_id], filter_string="tags.`dlnpipe.role` = 'configuration'",
                                      max_results=50000):
            found.setdefault(run.data.tags.get(CELL_TAG, ""), []).append(run)
        out = {}
        for cell in cells:
            old = found.get(cell["cell"], [])
            if old and all(r.data.tags.get(FINGERPRINT_TAG) == cell["fingerprint"] for r in old):
                out[cell["cell"]] = {"runs": sorted(r.info.run_id for r in old), "replaced": 0, "kept": True}
                continue
            runs = _log_cell(client, exp.experiment_id, cell, old,
                             tags={**tags, FINGERPRINT_TAG: cell["fingerprint"]})
            out[cell["cell"]] = {"runs": sorted(runs), "replaced": len(old), "kept": False}
        kept = sum(c["kept"] for c in out.values())
        log.info("%s: %d cells relogged, %d untouched (their runs kept)", name, len(out) - kept, kept)
        return {"tracking_uri": uri, "experiment_id": exp.experiment_id, "cells": out}


def _log_cell(client, experiment_id: str, cell: dict, old: list, *, tags: dict) -> list[str]:
    """Replace one cell's runs ``old`` by a fresh run per training configuration; their ids."""
    cell_id, parts = cell["cell"], cell["parts"]
    trains = {spec["cell"]["part"]: train for spec, train, _ in parts}  # the `part` column of the table
    spec = parts[0][0]
    table = configurations(parts, cell["datasets"])
    for run in old:
        client.delete_run(run.info.run_id)
    tags = {CELL_TAG: cell_id, **tags, "dlnpipe.experiment": spec["cell"]["experiment"],
            "dlnpipe.role": "configuration"}
    optimizers = optimizer_params(spec["experiment"])
    runs = [_log_configuration(client, experiment_id, spec, key, group, trains, cell["theory"][key[0]], tags,
                               optimizers)
            for key, group in table.groupby(["data", "optim", "lr", "scale"], sort=True)]
    log.info("cell %s: %d configuration runs logged (replaced %d old runs)", cell_id, len(runs), len(old))
    return runs


def _configuration_metrics(group: pd.DataFrame, b, lr: float, threshold: float) -> dict[str, float]:
    """Across-seed statistics of one configuration's final metrics, its theory constants and its
    optimizer's stability threshold."""
    status = group.status.to_numpy()
    conv = status == Status.CONVERGED
    values = {"frac_converged": float(np.mean(conv)), "frac_failed": float(np.mean(status == Status.FAILED)),
              "frac_diverged": float(np.mean(status == Status.DIVERGED)), "s_min": b.s_min, "s_upper": b.s_upper,
              "eta_c": b.eta_c, "two_over_lr": 2 / lr, "trace_min": b.trace_min, "threshold": threshold}
    ok = status != Status.DIVERGED
    values |= _quantile_metrics("sharpness", group.sharpness.where(ok).to_numpy())
    values |= _quantile_metrics("sharpness_ratio", (group.sharpness / b.s_min).where(conv).to_numpy())
    values |= _quantile_metrics("sharpness_init", group.sharpness_init.to_numpy())
    values |= _quantile_metrics("hessian_trace", group.hessian_trace.where(ok).to_numpy())
    values |= _quantile_metrics("hessian_trace_init", group.hessian_trace_init.to_numpy())
    values |= _quantile_metrics("trace_ratio", (group.hessian_trace_minimizer / b.trace_min).where(conv).to_numpy())
    for key in ("loss_train", "loss_test", "distance", "sharpness_precond", "sharpness_avg", "loss_train_avg",
                "loss_test_avg"):
        if key in group and group[key].notna().any():
            values |= _quantile_metrics(key, group[key].where(ok).to_numpy())
    return values


def optimizer_params(exp_cfg: dict) -> dict[str, dict]:
    """Each optimizer setting's name and options (defaults filled in), as MLflow params, by optim label."""
    from dlnpipe.config import ExperimentConfig

    points = ExperimentConfig.model_validate(exp_cfg).optim_points()
    return {p.label: {"optimizer": p.name, "optim": p.label, **p.resolved(exp_cfg["data"]["n"])} for p in points}


def _log_configuration(client, experiment_id: str, spec: dict, key: tuple, group: pd.DataFrame, trains: dict,
                       b, tags: dict, optimizers: dict) -> str:
    """One configuration run: every grid value as a param, the statistics as metrics, the median trajectories
    as step metrics, the per-seed table as an artifact."""
    from mlflow.entities import Metric, Param

    (data, optim, lr, scale), cell, exp_cfg = key, spec["cell"], spec["experiment"]
    opt = optimizers[optim]
    coords = {"init": cell["init"], "depth": cell["depth"], "width": cell["width"], "data": data, "optim": optim,
              "lr": float(lr), "scale": float(scale)}
    name = run_name(configuration_axes(exp_cfg), coords)
    rid = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    params = {"experiment": cell["experiment"], "cell": tags[CELL_TAG], "init": cell["init"], "depth": cell["depth"],
              "width": cell["width"], "kappa": group.kappa.iloc[0], "spectrum": group.spectrum.iloc[0],
              "wstar": group.wstar.iloc[0], "data": data, "lr": lr, "scale": scale,
              "steps": int(group.steps.iloc[0]), "seeds": len(group), "dtype": exp_cfg["dtype"],
              "train_path": "+".join(sorted(set(group.train_path))),
              **opt, "scale_unit": exp_cfg.get("scale_unit", "absolute"),
              "n": exp_cfg["data"]["n"], "d": exp_cfg["data"]["d"], "noise": exp_cfg["data"]["noise"]}
    now = int(time.time() * 1000)
    threshold = float(steppers.get(opt["optimizer"]).threshold(np.array([lr]), {k: [v] for k, v in opt.items()})[0])
    metrics = [Metric(k, v, now, 0) for k, v in _configuration_metrics(group, b, lr, threshold).items()
               if np.isfinite(v)]
    for traj in ("traj_loss_train", "traj_loss_test", "traj_distance", "traj_sharpness", "traj_sharpness_precond"):
        rows = [trains[p][traj][r] for p, r in zip(group.part, group.row) if traj in trains[p]]
        if not rows:
            continue
        steps = trains[group.part.iloc[0]]["record_steps"]
        with np.errstate(all="ignore"):
            med = np.nanmedian(np.where(np.isfinite(rows), rows, np.nan), axis=0)
        metrics += [Metric(f"{traj}_median", float(v), now, int(s)) for s, v in zip(steps, med) if np.isfinite(v)]
    plist = [Param(k, str(v)) for k, v in params.items()]
    for i in range(0, max(len(metrics), 1), 1000):
        client.log_batch(rid, metrics=metrics[i:i + 1000], params=plist if i == 0 else [])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "networks.csv"
        group.drop(columns=["row", "part"]).to_csv(path, index=False, float_format="%.10g")
        client.log_artifact(rid, str(path))
    client.set_terminated(rid)
    return rid
