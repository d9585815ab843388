"""The grid as data: the study config expanded once into datasets, cells (jobs) and networks.

* a **dataset** is one (experiment, kappa, spectrum, w* direction): ``data_id`` is ``paper``
  (Gaussian design), ``file`` (a user's .npz), ``k<κ>``, or ``k<κ>-<spectrum>-<wstar>`` when the
  experiment lists several spectra or w* directions;
* a **cell** is one (experiment, init, depth, width, dataset, part) and one training job; all its
  networks (learning rates × scales × seeds) are trained as one batch. ``split`` > 1 deals a
  cell's networks into parts of equal cost, each its own job (``split: auto``: as many parts as keep
  each job's estimated training cost, :func:`cost`, under :data:`AUTO_SPLIT_FLOPS`). With ``batch_datasets`` a linear
  cell holds every dataset of the experiment (data id ``all``): κ / spectrum / w* sweeps then cost
  one job per (init, depth, width) instead of one per dataset;
* a **network** is one (lr, scale, seed index) inside a cell. Its seed is a hash of every
  coordinate, so adding a grid point never changes another network's result.

Numbers in identifiers are written by one function, :func:`fmt`.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from dlnpipe import archs, steppers
from dlnpipe.config import ExperimentConfig, StageExperiment, StudyConfig, expand

# split: auto keeps each training job below this many floating-point operations: about 30 s of one
# core for the compiled GELU step (3e10 flop/s), so that on two cores no job holds the study up.
AUTO_SPLIT_FLOPS = 1e12


def fmt(x: float) -> str:
    """The one float format of identifiers and seeds: shortest repr that round-trips."""
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def data_id(kappa: float | None, *, file: str | None = None, shape: tuple[str, str] | None = None) -> str:
    """Dataset id; ``shape`` = (spectrum, wstar) is spelled out when the experiment varies it."""
    if file is not None:
        return "file"
    if kappa is None:
        return "paper"
    return f"k{fmt(kappa)}" if shape is None else f"k{fmt(kappa)}-{shape[0]}-{shape[1]}"


def data_points(exp: ExperimentConfig) -> list[tuple[str, float | None, str, str]]:
    """(data_id, kappa, spectrum, wstar) of each dataset of an experiment."""
    several = exp.data.several_shapes()
    return [(data_id(k, file=exp.data.file, shape=(s, w) if several else None), k, s, w)
            for k, s, w in exp.data.points()]


def derived_seed(*parts) -> int:
    """A 63-bit seed from the network's coordinates (blake2b of their canonical text)."""
    text = "|".join(fmt(p) if isinstance(p, (float, np.floating)) else str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


# Which keys of an experiment each stage's results depend on, in the order of the pipeline: ``grid``, which
# cells and networks exist (a cell carries its own init, depth and width); ``data``, the datasets;
# ``train`` and ``measure``, the cells' files; ``cube``, what only the cube's groups record (the groups
# also store the whole config but the figure list); ``figures``, which figures are drawn. A job's spec
# carries the keys of its stage and of the stages it builds on (SPEC_STAGES) and nothing else, and the
# job reads its config through a view that refuses any other key (config.StageExperiment). tests/test_reruns.py
# proves both: an edit of any key reruns exactly its stage's jobs, and each stage reads the keys filed here.
STAGE_KEYS = {
    "grid": ("inits", "depths", "widths", "batch_datasets", "split"),
    "data": ("data",),
    "train": ("scales", "runs", "dtype", "record_every", "record_sharpness", "record_eos", "optimizer", "flow_rtol",
              "flow_atol", "flow_max_steps", "scale_unit", "rtol", "atol"),
    "measure": ("sharpness_k", "trace_method", "trace_probes", "density", "density_probes", "density_steps"),
    "cube": ("description",),
    "figures": ("figures",),
}
SPEC_STAGES = {"train": ("data", "train"), "measure": ("data", "train", "measure"),
               "cube": ("grid", "data", "train", "measure", "cube")}
FILED = {key: stage for stage, keys in STAGE_KEYS.items() for key in keys}  # each key's stage


def spec_keys(stage: str) -> set[str]:
    """The experiment keys a ``stage`` job's spec carries: its own stage's and those of the stages it builds on."""
    return {k for s in SPEC_STAGES[stage] for k in STAGE_KEYS[s]}


def experiment_spec(exp: ExperimentConfig, stage: str) -> dict:
    """The experiment's keys a ``stage`` job depends on (:func:`spec_keys`) as plain data, stage by stage."""
    dump = exp.model_dump(mode="json")
    return {k: dump[k] for s in SPEC_STAGES[stage] for k in STAGE_KEYS[s]}


def stage_config(spec: dict, stage: str) -> StageExperiment:
    """The experiment config of a job's ``spec`` as its ``stage`` may read it
    (:class:`dlnpipe.config.StageExperiment`)."""
    return StageExperiment.of(spec["experiment"], stage, FILED)


@dataclass(frozen=True)
class Cell:
    experiment: str
    init: str
    depth: int
    width: int
    data: str  # data_id
    kappa: float | None
    part: int
    parts: int
    spectrum: str = "gaussian"
    wstar: str = "gaussian"
    optimizer: str = steppers.DEFAULT  # every network of a cell is trained by one optimizer (its settings may vary)

    @property
    def group(self) -> str:
        """The cell without its part index: one tracking job, whose MLflow runs carry it as a tag."""
        tail = "" if self.optimizer == steppers.DEFAULT else f"-{self.optimizer}"
        return f"{self.init}-L{self.depth}-m{self.width}-{self.data}{tail}"

    @property
    def id(self) -> str:
        """Canonical cell id (unique within an experiment), e.g. ``small-L10-m5-paper-p0``."""
        return f"{self.group}-p{self.part}"

    def spec(self, cfg: StudyConfig, stage: str = "train") -> dict:
        """What a ``stage`` job of this cell depends on, and nothing else, as plain data (the rule's params,
        so that Snakemake reruns the job exactly when one of these values changes): the cell, the device,
        and the experiment's keys of its stage (:func:`spec_keys`) with the cell's own init, depth and width."""
        part = experiment_spec(cfg.experiments[self.experiment], stage) | {
            "inits": [self.init], "depths": [self.depth], "widths": [self.width]}
        return {"cell": asdict(self), "id": self.id, "experiment": part, "device": cfg.device}


def datasets(cfg: StudyConfig) -> list[tuple[str, str, float | None, str, str]]:
    """(experiment, data_id, kappa, spectrum, wstar) for every dataset of the study."""
    return [(name, *point) for name, exp in cfg.experiments.items() for point in data_points(exp)]


ALL_DATA = "all"  # the data id of a cell that holds every dataset of its experiment (batch_datasets)


def merged(exp: ExperimentConfig, init: str) -> bool:
    """Whether cells of this init hold all the experiment's datasets (only linear nets train on
    moments, which can differ from network to network; the others need their own data)."""
    return exp.batch_datasets and archs.get(init).linear and len(exp.data.points()) > 1


def cells(cfg: StudyConfig) -> list[Cell]:
    out = []
    for name, exp in cfg.experiments.items():
        for init in exp.inits:
            for depth in exp.depths:
                for width in exp.widths:
                    points = ([(ALL_DATA, None, ALL_DATA, ALL_DATA)] if merged(exp, init) else data_points(exp))
                    for (data, k, spectrum, wstar), optimizer in itertools.product(points, exp.optimizers()):
                        whole = Cell(name, init, depth, width, data, k, 0, 1, spectrum, wstar, optimizer)
                        parts = exp.split if exp.split != "auto" else max(1, math.ceil(cost(exp, whole) /
                                                                                     AUTO_SPLIT_FLOPS))
                        out += [replace(whole, part=part, parts=parts) for part in range(parts)]
    return out


def cost(exp: ExperimentConfig, cell: Cell) -> float:
    """Estimated floating-point operations of training the cell's networks: each network's gradient
    evaluations (its stepper's count for its steps) times one step of its architecture."""
    net = networks(exp, cell)
    flops = archs.get(cell.init).step_flops(depth=cell.depth, width=cell.width, d=exp.data.d, n=exp.data.n)
    evaluations = steppers.get(cell.optimizer).evaluations
    options = exp.stepper_options(cell.optimizer)
    return flops * sum(evaluations(int(s), options) for s in net.steps)


@dataclass(frozen=True)
class CellNetworks:
    """The networks of one cell (part), as aligned arrays of length B; ``data`` is each network's data id,
    ``optim`` the label of its optimizer setting (:meth:`dlnpipe.config.ExperimentConfig.optim_points`)."""

    lr: np.ndarray
    scale: np.ndarray
    seed_index: np.ndarray
    seed: np.ndarray
    steps: np.ndarray
    data: np.ndarray
    optim: np.ndarray

    def __len__(self) -> int:
        return len(self.lr)

    def arrays(self) -> dict[str, np.ndarray]:
        """The coordinates by name (:data:`NETWORK_FIELDS`: what a trained cell's file stores of each network)."""
        return {f: getattr(self, f) for f in NETWORK_FIELDS}

    def take(self, rows: np.ndarray) -> CellNetworks:
        return CellNetworks(**{f: a[rows] for f, a in self.arrays().items()})


NETWORK_FIELDS = tuple(f.name for f in fields(CellNetworks))


def all_networks(exp: ExperimentConfig, experiment: str, init: str, depth: int, width: int,
                 points: list[tuple[str, float | None]], optimizer: str = steppers.DEFAULT) -> CellNetworks:
    """Every network on the datasets ``points`` = [(data_id, kappa)] for each setting of ``optimizer``;
    seeds depend neither on the spectrum or w* direction nor on the optimizer, so the networks of
    datasets that differ only there, and the same network under each optimizer, start alike."""
    rows = []
    labels = [p.label for p in exp.optim_points() if p.name == optimizer]
    for data, kappa in points:
        for run in exp.runs:
            for lr in expand(run.lr):
                for scale in expand(exp.scales):
                    for i in range(run.seeds):
                        seed = derived_seed(experiment, init, depth, width, "paper" if kappa is None else kappa,
                                            lr, scale, i)
                        rows += [(lr, scale, i, seed, run.steps, data, label) for label in labels]
    lr, scale, idx, seed, steps, data, optim = (np.array(c) for c in zip(*rows))
    return CellNetworks(lr=lr.astype(float), scale=scale.astype(float), seed_index=idx.astype(np.int64),
                    seed=seed.astype(np.int64), steps=steps.astype(np.int64), data=data.astype(str),
                    optim=optim.astype(str))


def networks(exp: ExperimentConfig, cell: Cell) -> CellNetworks:
    """The networks of ``cell``: all of them, or its share when the cell is split into parts.

    Parts are dealt round-robin in decreasing order of steps, so each part costs about the same.
    """
    points = ([(d, k) for d, k, _, _ in data_points(exp)] if cell.data == ALL_DATA else [(cell.data, cell.kappa)])
    net = all_networks(exp, cell.experiment, cell.init, cell.depth, cell.width, points, cell.optimizer)
    if cell.parts == 1:
        return net
    order = np.lexsort((net.optim, net.seed_index, net.scale, net.lr, -net.steps))
    mine = np.sort(order[cell.part::cell.parts])
    return net.take(mine)


def optimizer_options(exp: ExperimentConfig, optimizer: str, optim: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """train()'s per-network options for networks with optim labels ``optim`` (all of ``optimizer``):
    every option some setting gives, with the optimizer's default where a setting leaves it out
    (batch size: n, the training set's size)."""
    settings = {p.label: p.settings for p in exp.optim_points() if p.name == optimizer}
    keys = list(dict.fromkeys(k for s in settings.values() for k in s))
    cls = steppers.get(optimizer).variant(dict.fromkeys(keys, 0.0))
    resolved = {label: cls.resolved_options(s, n) for label, s in settings.items()}
    return {key: np.array([resolved[label][key] for label in optim], dtype=float) for key in keys}


def init_scale(exp: ExperimentConfig, init: str, width: int, scale):
    """The scale s given to init_network for a grid value: ``scale_unit: inv_sqrt_width`` means
    units of 1/√m for small inits (entries N(0, s²/m)); residual init is unchanged."""
    if exp.scale_unit == "inv_sqrt_width" and archs.get(init).small_init:
        return np.asarray(scale, dtype=float) / np.sqrt(width)
    return np.asarray(scale, dtype=float)
