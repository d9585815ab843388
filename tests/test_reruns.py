"""Reruns that match the edit, on a finished quick study (a copy of its results and Snakemake's records):
each job's params hold only what its outputs depend on (dlnpipe.grid.STAGE_KEYS), every experiment has
its own group of the cube, and tracking jobs do not depend on the store being created again, so

* an edit of any key of an experiment, alone, schedules exactly the jobs of the stage the key is filed
  under, and of the stages after it, of that experiment only (a property test over every key), and
  each stage's jobs read exactly the keys filed under it (what they read is in their files' meta;
  reading a key their spec lacks raises, naming it);

* a cosmetic edit (an experiment's description, the order of its figures) trains, measures and logs
  nothing;
* an edit of one experiment's grid, or of its data, schedules no job of any other experiment;
* a new experiment schedules its own jobs only (and creates its MLflow experiment);
* after the edited study has run, the MLflow runs of untouched cells keep their ids;
* a new figure in the registry has its own caption, and the report shows it.
"""

import json
import re
import typing

import pytest
import yaml
from workflow_utils import QUICK, copy_study, snakemake

from dlnpipe import figures, grid
from dlnpipe.config import ConfigError, ExperimentConfig, SpecError, validate
from dlnpipe.files import read_meta
from dlnpipe.grid import STAGE_KEYS
from dlnpipe.tracking import configuration_axes

pytestmark = pytest.mark.slow
HEAVY = {"train_cell", "measure_sharpness", "track_experiment", "mlflow_init", "make_dataset"}


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

    def dry(edited: dict, *, text: bool = False):
        path = tmp_path / "edited.yaml"
        path.write_text(yaml.safe_dump(edited, sort_keys=False))
        out = snakemake(wd, "-n", "--cores", "2", "--configfile", str(path)).stdout
        return out if text else scheduled(out)

    return wd, cfg, dry


def test_every_experiment_key_belongs_to_one_stage():
    keys = [k for group in STAGE_KEYS.values() for k in group]
    assert sorted(keys) == sorted(ExperimentConfig.model_fields) and len(keys) == len(set(keys))


# -- the rerun rules, proven key by key -------------------------------------------------------------------

def jobs_of(out: str) -> set[tuple[str, str, str]]:
    """(rule, experiment, its other wildcard: cell, group, data or figure) of every job of a dry run."""
    jobs = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if head and head.group(1) != "all":
            found = dict(re.findall(r"(\w+)=([^,\s]+)", (re.search(r"wildcards: (.*)", block) or ["", ""])[1]))
            other = next((found[k] for k in ("cell", "group", "data", "figure") if k in found), "")
            jobs.add((head.group(1), found.get("exp", ""), other))
    return jobs


def _choices(annotation) -> list:
    """The values a Literal anywhere in ``annotation`` allows."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [c for arg in typing.get_args(annotation) for c in _choices(arg)]


def edits(key: str, value):
    """Candidate changed values of ``key``, one kind per type of value: a bool flipped, a number moved, another
    choice of a Literal, a list grown by one element, a nested mapping with one entry moved; the caller keeps
    the first that validates."""
    choices = _choices(ExperimentConfig.model_fields[key].annotation)
    if isinstance(value, bool):
        yield not value
    elif isinstance(value, (int, float)):
        yield value + 1 if isinstance(value, int) else value * 2
    elif isinstance(value, str):
        yield from (c for c in choices if c != value)
        yield 2 if value == "auto" else value + " (edited)"  # split: a number of parts
    elif isinstance(value, list) and value and isinstance(value[0], dict):  # runs: one more step
        yield [{**value[0], "steps": value[0]["steps"] + 1}, *value[1:]]
    elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
        yield value + [max(value) + 1]
    elif isinstance(value, list):  # names: one more of the allowed ones (or another optimizer setting)
        yield from (value + [c] for c in choices if c not in value)
        yield value[:-1] if len(value) > 1 else value
    elif isinstance(value, dict):  # data: the first number changed
        name = next(k for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        yield {**value, name: value[name] + 1}


def expected_jobs(old, new, exp: str, key: str) -> set[tuple[str, str, str]]:
    """The jobs an edit of ``key`` in experiment ``exp`` (config ``old`` -> ``new``) must schedule: those of the
    key's stage (dlnpipe.grid.STAGE_KEYS) and of every stage after it, of that experiment. For a grid key,
    only the cells that are new (another id or another part count) train and measure."""
    stage = grid.FILED[key]
    before = set(grid.cells(old))
    cells = [c for c in grid.cells(new) if c.experiment == exp]
    if stage == "figures":
        added = set(new.experiments[exp].figures) - set(old.experiments[exp].figures)
        return {("plot", exp, f) for f in added}
    rerun = [c for c in cells if c not in before] if stage == "grid" else cells
    order = ("grid", "data", "train", "measure", "cube")  # the pipeline: a stage's jobs, then those after it
    jobs = set()
    for rule, first_of in (("train_cell", "train"), ("measure_sharpness", "measure")):
        if order.index(stage) <= order.index(first_of):
            jobs |= {(rule, exp, c.id) for c in rerun}
    if order.index(stage) <= order.index("measure") and rerun:
        jobs.add(("track_experiment", exp, ""))  # one job per experiment, relogging the cells that changed
    if stage == "data":
        jobs |= {("make_dataset", exp, d) for d, *_ in grid.data_points(new.experiments[exp])}
    jobs |= {("gather_cube", exp, ""), ("compare_bounds", exp, "")}
    return jobs | {("plot", exp, f) for f in new.experiments[exp].figures}


def edit_batches(raw: dict) -> list[list[tuple[str, str, object]]]:
    """Every experiment key with a changed value, (experiment, key, value), in dry runs of at most one edit per
    experiment (the jobs of a dry run are told apart by their experiment)."""
    exps = list(raw["experiments"])
    batches: list[list] = []
    for i, key in enumerate(ExperimentConfig.model_fields):
        order = exps[i % len(exps):] + exps[: i % len(exps)]
        for batch in [*batches, []]:
            used = {e for e, _, _ in batch}
            found = next(((e, v) for e in order if e not in used for v in edits(key, _dumped(raw, e)[key])
                          if _valid(raw, e, key, v)), None)
            if found:
                if not batch:
                    batches.append(batch)
                batch.append((found[0], key, found[1]))
                break
        else:
            raise AssertionError(f"no experiment of the quick study takes an edit of {key!r}")
    return batches


def _dumped(raw, exp):
    return validate(raw).experiments[exp].model_dump(mode="json")


def _valid(raw, exp, key, value) -> bool:
    edited = {**raw, "experiments": {**raw["experiments"], exp: {**raw["experiments"][exp], key: value}}}
    try:
        validate(edited)
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("batch", range(4))
def test_an_edit_of_any_key_reruns_exactly_its_stage(study, batch):
    """The property: for every key of an experiment, a dry run after changing only that key (one
    representative changed value per type of key; keys of different experiments share a dry run) schedules
    exactly the jobs its stage owns. A key filed under the wrong stage in STAGE_KEYS fails here or in
    test_each_stage_reads_the_keys_filed_under_it, naming it."""
    wd, cfg, dry = study
    batches = edit_batches(cfg)
    assert sorted(k for b in batches for _, k, _ in b) == sorted(ExperimentConfig.model_fields)
    assert len(batches) == 4, [[k for _, k, _ in b] for b in batches]
    edited = json.loads(json.dumps(cfg))
    for exp, key, value in batches[batch]:
        edited["experiments"][exp][key] = value
    old, new = validate(cfg), validate(edited)
    got = jobs_of(dry(edited, text=True))
    for exp, key, value in batches[batch]:
        want = expected_jobs(old, new, exp, key)
        mine = {j for j in got if j[1] == exp}
        assert mine == want, (f"editing {key!r} (filed under {grid.FILED[key]!r}) of {exp!r} to {value!r}: "
                              f"missing {sorted(want - mine)}, not expected {sorted(mine - want)}")
    root = {j for j in got if j[1] == ""}
    cosmetic = all(grid.FILED[k] == "figures" for _, k, _ in batches[batch])
    # the runs tables' views list the axes that vary: an edit that makes another one vary updates them
    views = any(configuration_axes(old.experiments[e].model_dump(mode="json"))
                != configuration_axes(new.experiments[e].model_dump(mode="json")) for e, _, _ in batches[batch])
    assert root == ({("mlflow_init", "", "")} if views else set()) | (set() if cosmetic else {("cube_root", "", "")})


def test_each_stage_reads_the_keys_filed_under_it(quick_run):
    """What the quick study's train and measure jobs read of their config (their files' meta): every key filed
    under a stage is read by some job of it, and no job read a key filed under a later stage (the view they
    read through refuses it). The check names a misfiled key."""
    reads = stage_reads(quick_run / "results/quick")
    assert misfiled(reads, STAGE_KEYS) == []
    wrong = {**STAGE_KEYS, "train": (*STAGE_KEYS["train"], "sharpness_k"),
             "measure": tuple(k for k in STAGE_KEYS["measure"] if k != "sharpness_k")}
    assert misfiled(reads, wrong) == ["sharpness_k: filed under train, whose jobs never read it"]
    late = {**STAGE_KEYS, "train": tuple(k for k in STAGE_KEYS["train"] if k != "rtol"),
            "cube": (*STAGE_KEYS["cube"], "rtol")}
    assert misfiled(reads, late) == ["rtol: read by the train stage, filed under cube, which it does not build on"]


def stage_reads(results) -> dict[str, set[str]]:
    return {stage: set().union(*(read_meta(p)["read"] for p in (results / stage).rglob("*.npz")))
            for stage in ("train", "measure")}


def misfiled(reads: dict[str, set[str]], table: dict) -> list[str]:
    filed = {k: s for s, keys in table.items() for k in keys}
    seen = {s: {k for b in grid.SPEC_STAGES[s] for k in table[b]} for s in reads}
    problems = [f"{k}: read by the {s} stage, filed under {filed[k]}, which it does not build on"
                for s, keys in reads.items() for k in sorted(keys) if k not in seen[s] and k in filed
                and k not in ("inits", "depths", "widths")]  # a cell's own grid coordinates
    problems += [f"{k}: filed under {s}, whose jobs never read it" for s in reads for k in table[s]
                 if k not in reads[s]]
    return problems


def test_a_job_reading_a_key_its_spec_lacks_fails_naming_it(quick_run, tmp_path, monkeypatch):
    """sharpness_k filed (wrongly) under cube: the measure job's spec no longer carries it, and the job fails
    on reading it, naming the key and where it is filed, instead of measuring with the default."""
    from dlnpipe.stages import measure

    results = quick_run / "results/quick"
    train = results / "train/small/small-L3-m3-paper-p0.npz"
    spec = read_meta(train)["spec"]
    cfg = validate(yaml.safe_load(QUICK.read_text()))
    monkeypatch.setitem(STAGE_KEYS, "measure", tuple(k for k in STAGE_KEYS["measure"] if k != "sharpness_k"))
    monkeypatch.setitem(STAGE_KEYS, "cube", (*STAGE_KEYS["cube"], "sharpness_k"))
    monkeypatch.setitem(grid.FILED, "sharpness_k", "cube")
    cell = grid.Cell(**spec["cell"])
    misspec = cell.spec(cfg, "measure")
    assert "sharpness_k" not in misspec["experiment"]
    with pytest.raises(SpecError, match=r"measure stage read experiment key 'sharpness_k'.*files it under 'cube'"):
        measure.run(misspec, [results / "data/small/paper.npz"], train, tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


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
    assert {"train_cell", "measure_sharpness", "track_experiment", "gather_cube", "compare_bounds", "plot"} <= rules
    assert ("make_dataset" in rules) == (edit == "data") and "mlflow_init" not in rules


def test_new_experiment_runs_only_its_own_jobs(study):
    wd, cfg, dry = study
    cfg["experiments"]["small2"] = {**cfg["experiments"]["small"], "figures": ["fig1b"]}
    jobs = dry(cfg)
    assert {exp for _, exp in jobs} == {"small2", ""}, jobs
    assert ("mlflow_init", "") in jobs  # creates the new MLflow experiment; the others relog nothing


def test_untouched_cells_keep_their_mlflow_runs(study, tmp_path):
    """One tracking job per experiment relogs only the cells whose results changed: after an edit of small's scales
    (its one cell retrains) and of resid's description (nothing reruns), small's cell has new runs, every other
    cell the same run ids, and a forced rerun of small's tracking job (same results) relogs nothing."""
    wd, cfg, dry = study
    logged = sorted((wd / "results/quick/mlflow/logged").glob("*.json"))
    before = {(p.stem, c): v["runs"] for p in logged for c, v in json.loads(p.read_text())["cells"].items()}
    cfg["experiments"]["small"]["scales"] = [0.3, 0.5, 0.7]
    cfg["experiments"]["resid"]["description"] = "edited"
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    snakemake(wd, "--cores", "2", "--configfile", str(path))

    def runs_now():
        return {(p.stem, c): v for p in (wd / "results/quick/mlflow/logged").glob("*.json")
                for c, v in json.loads(p.read_text())["cells"].items()}

    after = runs_now()
    assert set(after) == set(before)
    for key, runs in before.items():
        if key[0] == "small":
            assert not set(after[key]["runs"]) & set(runs) and not after[key]["kept"], key  # relogged: new runs
        else:
            assert after[key]["runs"] == runs, key  # untouched: the same run ids
    snakemake(wd, "--cores", "2", "--configfile", str(path), "--forcerun",
              "results/quick/mlflow/logged/small.json")
    again = runs_now()
    assert again[("small", "small-L3-m3-paper")]["kept"]
    assert again[("small", "small-L3-m3-paper")]["runs"] == after[("small", "small-L3-m3-paper")]["runs"]
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{wd / 'results/mlflow.db'}")
    exp = client.get_experiment_by_name("dlnpipe/quick/resid")
    live = {r.info.run_id for r in client.search_runs([exp.experiment_id], "tags.`dlnpipe.role` = 'configuration'")}
    assert live == {r for key, runs in before.items() if key[0] == "resid" for r in runs}


def test_every_figure_has_its_own_caption(tmp_path):
    from workflow_utils import ROOT

    captions = {p.stem for p in figures.CAPTIONS.glob("*.rst")}
    assert captions == set(figures.NAMES)
    for name in figures.NAMES:
        assert len(figures.caption(name)) > 80, name
    # the report's template has no per-figure branches: each figure brings its own text
    template = (ROOT / "workflow/report/figure.rst").read_text()
    assert "snakemake.params.caption" in template and "{% if" not in template
