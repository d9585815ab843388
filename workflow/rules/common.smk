# Validated config, the study's directory, the grid as a table of cells, wildcard constraints, and the
# job specs.
import json
import math
import re
import sys

from dlnpipe.config import ConfigError, study_name, validate
from dlnpipe.devices import host_has_gpu
from dlnpipe.figures import caption as figure_caption
from dlnpipe.grid import ALL_DATA, experiment_spec
from dlnpipe.grid import cells as grid_cells
from dlnpipe.grid import cost as grid_cost
from dlnpipe.grid import datasets as grid_datasets
from dlnpipe.locks import record_holder, release_holder
from dlnpipe.scaffold import package_link
from dlnpipe.studies import LayoutError, check_layout, study_dir
from dlnpipe.tracking import configuration_axes, table_view, tracking_uri

try:
    STUDY = validate(config)
    # the study's name, when it has no study: key, is its config file's (the last Snakemake loaded)
    STUDY_NAME = study_name(STUDY, workflow.configfiles)
    # Everything the study produces lives under its own directory (results/<study>/): no job of one
    # study reads, writes or deletes a file of another. Only the MLflow store, results/mlflow.db, is shared.
    RESULTS = study_dir("results", STUDY_NAME)
except ConfigError as err:
    sys.exit(f"config error: {err}")
try:
    check_layout("results")
except LayoutError as err:
    sys.exit(str(err))


def out(path):
    """A path inside the study's directory."""
    return f"{RESULTS}/{path}"


CELLS = {(c.experiment, c.id): c for c in grid_cells(STUDY)}
GROUPS = {}  # (experiment, cell without part) -> its parts
for _cell in CELLS.values():
    GROUPS.setdefault((_cell.experiment, _cell.group), []).append(_cell)
TRACKING_URI = tracking_uri(STUDY.mlflow.tracking_uri, "results")
MLFLOW_NAMES = {
    e: f"{STUDY.mlflow.experiment_prefix}{STUDY_NAME}/{e}" for e in STUDY.experiments
}
DATASETS = {
    (exp, data): (kappa, spectrum, wstar)
    for exp, data, kappa, spectrum, wstar in grid_datasets(STUDY)
}
FIGURES = [(exp, fig) for exp, e in STUDY.experiments.items() for fig in e.figures]
ENV = "../../envs/dlnpipe.yaml"


def one_of(names):
    """A wildcard constraint matching exactly these names (ids hold dots: k1.5)."""
    return "|".join(re.escape(n) for n in sorted(names))


wildcard_constraints:
    exp=one_of(STUDY.experiments),
    cell=one_of({c.id for c in CELLS.values()}),
    data=one_of({d for _, d in DATASETS}),
    group=one_of({g for _, g in GROUPS}),
    figure="[a-z0-9_]+",


def data_spec(wildcards):
    exp = STUDY.experiments[wildcards.exp]
    spec = {
        "data": exp.data.model_dump(mode="json"),
        "kappa": DATASETS[(wildcards.exp, wildcards.data)][0],
        "spectrum": DATASETS[(wildcards.exp, wildcards.data)][1],
        "wstar": DATASETS[(wildcards.exp, wildcards.data)][2],
        "experiment": wildcards.exp,
        "data_id": wildcards.data,
    }
    return json.dumps(spec)


def cell_spec(stage):
    """Input function: the JSON spec of a ``stage`` job of the cell, holding only what its outputs
    depend on (dlnpipe.grid.STAGE_KEYS), so that its params change exactly when they should rerun.
    """

    def spec(wildcards):
        return json.dumps(CELLS[(wildcards.exp, wildcards.cell)].spec(STUDY, stage))

    return spec


def cell_priority(wildcards):
    """Longest jobs first: a cell's estimated training cost (log10 of its floating-point operations),
    so that the study's critical path starts as early as it can."""
    cell = CELLS[(wildcards.exp, wildcards.cell)]
    return round(
        math.log10(max(grid_cost(STUDY.experiments[cell.experiment], cell), 1.0)), 3
    )


def experiment_data(exp, data):
    """The dataset file(s) of a cell: its own, or all of the experiment's (batch_datasets)."""
    keys = [d for e, d in DATASETS if e == exp] if data == ALL_DATA else [data]
    return [rules.make_dataset.output.npz.format(exp=exp, data=d) for d in keys]


def cell_data(wildcards):
    cell = CELLS[(wildcards.exp, wildcards.cell)]
    return experiment_data(cell.experiment, cell.data)


def group_files(template):
    """Input function: ``template`` (a train or measure file) for every part of a cell group."""

    def files(wildcards):
        parts = GROUPS[(wildcards.exp, wildcards.group)]
        return [template.format(exp=c.experiment, cell=c.id) for c in parts]

    return files


def group_data(wildcards):
    cell = GROUPS[(wildcards.exp, wildcards.group)][0]
    return experiment_data(cell.experiment, cell.data)


def experiment_groups(exp):
    """The cell groups of an experiment: each cell id without part -> its parts' ids."""
    return {
        g: [c.id for c in parts] for (e, g), parts in sorted(GROUPS.items()) if e == exp
    }


def experiment_files(template):
    """Input function: ``template`` (a train or measure file) for every part of every cell of an experiment."""

    def files(wildcards):
        groups = experiment_groups(wildcards.exp)
        return [
            template.format(exp=wildcards.exp, cell=c)
            for ids in groups.values()
            for c in ids
        ]

    return files


def all_data(wildcards):
    return experiment_data(wildcards.exp, ALL_DATA)


def mlflow_name(wildcards):
    return MLFLOW_NAMES[wildcards.exp]


def mlflow_views():
    """Each MLflow experiment's runs-table view: the coordinates that vary, then the key metrics."""
    return json.dumps(
        {
            MLFLOW_NAMES[e]: table_view(configuration_axes(exp.model_dump(mode="json")))
            for e, exp in STUDY.experiments.items()
        }
    )


def uses_gpu(wildcards):
    """1 when the job runs on CUDA (the local profile caps gpu at 1: one job per GPU; the slurm
    profile asks SLURM for a GPU). `device: cuda` always asks; `auto` asks when this host shows one
    (without importing torch: building the DAG never does).
    """
    if STUDY.device != "auto":
        return int(STUDY.device == "cuda")
    return int(host_has_gpu())


def experiment_cells(template, exp):
    """``template`` (a train or measure file) for every cell of experiment ``exp``."""
    return [template.format(exp=e, cell=c) for e, c in sorted(CELLS) if e == exp]


def group_spec(wildcards):
    """What an experiment's group of the cube depends on (dlnpipe.grid.STAGE_KEYS): its config without the
    figure list."""
    exp = experiment_spec(STUDY.experiments[wildcards.exp], "cube")
    return json.dumps({"name": wildcards.exp, "experiment": exp})


def root_config():
    """The study config the cube's root records: every experiment without its figure list."""
    study = STUDY.model_dump(mode="json")
    for exp in study["experiments"].values():
        exp.pop("figures")
    return json.dumps(study)


# With --sdm conda the jobs run in envs/dlnpipe.yaml's environment, which holds every locked dependency
# but not dlnpipe itself: they import this very package through PYTHONPATH (a directory linking only it).
if any(m.name == "CONDA" for m in workflow.deployment_settings.deployment_method):
    PYTHONPATH = (
        f"PYTHONPATH={package_link('.snakemake')}${{{{PYTHONPATH:+:$PYTHONPATH}}}} "
    )
else:
    PYTHONPATH = ""


def logged(command):
    """``command`` with its stderr into the job's log; when it fails, the log's last line (the cause, one
    line) is echoed to Snakemake's own output with the log's path."""
    return (
        PYTHONPATH
        + command
        + ' 2> {log} || {{ status=$?; echo "error: $(tail -n 1 {log})  (log: {log})" >&2;'
        " exit $status; }}"
    )


# Where this run holds Snakemake's lock (host, pid), for `python -m dlnpipe unlock` on a shared
# filesystem; not for dry runs or cluster jobs (Snakemake runs no hooks there).
onstart:
    record_holder(".", study=STUDY_NAME)


onsuccess:
    release_holder(".")


onerror:
    release_holder(".")


def cell_keys():
    keys = sorted(CELLS)
    return dict(exp=[e for e, _ in keys], cell=[c for _, c in keys])


def data_keys():
    keys = sorted(DATASETS)
    return dict(exp=[e for e, _ in keys], data=[d for _, d in keys])


def all_targets():
    targets = [rules.cube_root.output.root]
    targets += expand(rules.compare_bounds.output.csv, exp=list(STUDY.experiments))
    if STUDY.mlflow.enabled:
        targets += [
            rules.track_experiment.output.json.format(exp=e)
            for e in sorted({e for e, _ in GROUPS})
        ]
    for exp, fig in FIGURES:
        targets += [
            rules.plot.output.png.format(exp=exp, figure=fig),
            rules.plot.output.pdf.format(exp=exp, figure=fig),
        ]
    return targets
