"""Reruns that match the edit, on a finished quick study (a copy of its results and Snakemake's records):
each job's params hold only what its outputs depend on (dlnpipe.grid.STAGE_KEYS), every experiment has
its own group of the cube, and tracking jobs do not depend on the store being created again, so

* a cosmetic edit (an experiment's description, the order of its figures) trains, measures and logs
  nothing;
* an edit of one experiment's grid, or of its data, schedules no job of any other experiment;
* a new experiment schedules its own jobs only (and creates its MLflow experiment);
* after the edited study has run, the MLflow runs of untouched cells keep their ids;
* a new figure in the registry has its own caption, and the report shows it.
"""

import json
import re

import pytest
import yaml
from workflow_utils import QUICK, copy_study, snakemake

from dlnpipe import figures
from dlnpipe.config import ExperimentConfig
from dlnpipe.grid import STAGE_KEYS

pytestmark = pytest.mark.slow
HEAVY = {"train_cell", "measure_sharpness", "track_cell", "mlflow_init", "make_dataset"}


def scheduled(out: str) -> list[tuple[str, str]]:
    """(rule, experiment or "") of every job of a dry run's listing."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if head:
            exp = re.search(r"wildcards: .*?exp=([A-Za-z0-9_]+)", block)
            jobs.append((head.group(1), exp.group(1) if exp else ""))
    return [j for j in jobs if j[0] != "all"]


@pytest.fixture
def study(quick_run, tmp_path):
    """A copy of the finished quick study, and a way to dry-run an edited config in it."""
    wd = copy_study(quick_run, tmp_path / "wd")
    cfg = yaml.safe_load(QUICK.read_text())

    def dry(edited: dict) -> list[tuple[str, str]]:
        path = tmp_path / "edited.yaml"
        path.write_text(yaml.safe_dump(edited, sort_keys=False))
        return scheduled(snakemake(wd, "-n", "--cores", "2", "--configfile", str(path)).stdout)

    return wd, cfg, dry


def test_every_experiment_key_belongs_to_one_stage():
    keys = [k for group in STAGE_KEYS.values() for k in group]
    assert sorted(keys) == sorted(ExperimentConfig.model_fields) and len(keys) == len(set(keys))


def test_unchanged_study_has_nothing_to_do(study):
    wd, cfg, dry = study
    assert dry(cfg) == []


def test_cosmetic_edit_reruns_no_training_measuring_or_logging(study):
    wd, cfg, dry = study
    small = cfg["experiments"]["small"]
    small["description"] = "a new description"
    small["figures"] = list(reversed(small["figures"]))
    jobs = dry(cfg)
    assert not {rule for rule, _ in jobs} & HEAVY, jobs
    assert {exp for _, exp in jobs} <= {"small", ""}  # the small group, its tables and figures, the root
    assert ("gather_cube", "small") in jobs and ("cube_root", "") in jobs


def test_figure_list_edit_draws_only_the_new_figure(study):
    wd, cfg, dry = study
    cfg["experiments"]["small"]["figures"] = cfg["experiments"]["small"]["figures"][:3] + ["fig6a"]
    assert dry(cfg) == [("plot", "small")]


@pytest.mark.parametrize("edit", ["grid", "data"])
def test_one_experiment_edit_reruns_only_that_experiment(study, edit):
    wd, cfg, dry = study
    small = cfg["experiments"]["small"]
    if edit == "grid":
        small["scales"] = [0.3, 0.5, 0.7]
    else:
        small["data"]["seed"] = 2
    jobs = dry(cfg)
    assert {exp for _, exp in jobs} == {"small", ""}, jobs
    rules = {rule for rule, _ in jobs}
    assert {"train_cell", "measure_sharpness", "track_cell", "gather_cube", "compare_bounds", "plot"} <= rules
    assert ("make_dataset" in rules) == (edit == "data") and "mlflow_init" not in rules


def test_new_experiment_runs_only_its_own_jobs(study):
    wd, cfg, dry = study
    cfg["experiments"]["small2"] = {**cfg["experiments"]["small"], "figures": ["fig1b"]}
    jobs = dry(cfg)
    assert {exp for _, exp in jobs} == {"small2", ""}, jobs
    assert ("mlflow_init", "") in jobs  # creates the new MLflow experiment; the others relog nothing


def test_untouched_cells_keep_their_mlflow_runs(study, tmp_path):
    wd, cfg, dry = study
    logged = sorted((wd / "results/quick/mlflow/logged").rglob("*.json"))
    before = {p.relative_to(wd): json.loads(p.read_text())["runs"] for p in logged}
    cfg["experiments"]["small"]["scales"] = [0.3, 0.5, 0.7]
    cfg["experiments"]["resid"]["description"] = "edited"
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    snakemake(wd, "--cores", "2", "--configfile", str(path))
    after = {p: json.loads((wd / p).read_text())["runs"] for p in before}
    for p, runs in before.items():
        if p.parts[4] == "small":
            assert not set(after[p]) & set(runs), p  # relogged: new runs
        else:
            assert after[p] == runs, p  # untouched: the same run ids
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{wd / 'results/mlflow.db'}")
    exp = client.get_experiment_by_name("dlnpipe/quick/resid")
    live = {r.info.run_id for r in client.search_runs([exp.experiment_id], "tags.`dlnpipe.role` = 'configuration'")}
    assert live == {r for p, runs in before.items() if p.parts[4] == "resid" for r in runs}


def test_every_figure_has_its_own_caption(tmp_path):
    from workflow_utils import ROOT

    captions = {p.stem for p in figures.CAPTIONS.glob("*.rst")}
    assert captions == set(figures.NAMES)
    for name in figures.NAMES:
        assert len(figures.caption(name)) > 80, name
    # the report's template has no per-figure branches: each figure brings its own text
    template = (ROOT / "workflow/report/figure.rst").read_text()
    assert "snakemake.params.caption" in template and "{% if" not in template
