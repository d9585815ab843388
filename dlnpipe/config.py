"""The study configuration: one typed model, the single source of truth for ``config.yaml``.

Unknown keys are rejected, every key has a description (with its unit) and a default where one
makes sense. ``workflow/schemas/config.schema.json`` is generated from this model
(``python -m dlnpipe schema``); a test keeps the two in sync. Errors are reported as one line
naming the key and the offending value.
"""

from __future__ import annotations

import decimal
import itertools
import json
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from dlnpipe import archs, figures, steppers

Positive = Annotated[float, Field(gt=0)]
Spectrum = Literal["geometric", "linear", "two-level", "spike"]
WStar = Literal["random", "top", "bottom"]
ArchName = Literal[archs.NAMES]  # every architecture of the registry (dlnpipe.archs)
FigureName = Literal[figures.NAMES]  # every figure of the registry (dlnpipe.figures)
OptimizerName = Literal[steppers.NAMES]  # every stepper of the registry (dlnpipe.steppers)


class ConfigError(ValueError):
    """A configuration problem, as one line naming the key and the value."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Linspace(Strict):
    linspace: tuple[float, float, Annotated[int, Field(ge=1)]] = Field(
        description="[start, stop, num]: num evenly spaced values, both ends included (numpy.linspace)")


class Logspace(Strict):
    logspace: tuple[float, float, Annotated[int, Field(ge=1)]] = Field(
        description="[start, stop, num]: num values 10^x for x evenly spaced in [start, stop] (numpy.logspace), "
                    "each 10^x correctly rounded, so the same on every CPU")


Values = float | Annotated[list[float], Field(min_length=1)] | Linspace | Logspace


def exp10(x: float) -> float:
    """10^x correctly rounded to float64, in software: the same bits on every CPU.

    numpy.power is vectorised per CPU (on AVX-512 through SVML, within 1 ulp, elsewhere through other
    code): 10^-1.25 lies 0.49 ulp from one float64 and 0.51 ulp from the next, and numpy.logspace gives the
    first on an AVX2 CPU and the second on an AVX-512 one. A grid value that differs in its last bit is
    another network (seeds hash the shortest repr of the coordinates, dlnpipe.grid.derived_seed), so
    grid values are computed here: 10^x in 40 decimal digits (libmpdec, integer arithmetic), then
    rounded once to float64.
    """
    with decimal.localcontext() as ctx:
        ctx.prec = 40
        return float(decimal.Decimal(10) ** decimal.Decimal(float(x)))


def expand(values: Values) -> list[float]:
    """A scalar, list, {linspace: [a, b, n]} or {logspace: [a, b, n]} as a list of floats.
    linspace takes only + and × (IEEE, the same on every CPU); logspace its exponents from it, then :func:`exp10`."""
    if isinstance(values, Linspace):
        return [float(x) for x in np.linspace(*values.linspace)]
    if isinstance(values, Logspace):
        return [exp10(x) for x in np.linspace(*values.logspace)]
    if isinstance(values, (int, float)):
        return [float(values)]
    return [float(x) for x in values]


class DataConfig(Strict):
    n: int = Field(50, ge=1, description="training samples (the test set has as many)")
    d: int = Field(5, ge=1, description="input dimension")
    noise: float = Field(1.0, ge=0, description="standard deviation of the label noise")
    seed: int = Field(0, ge=0, description="seed of the data generator")
    kappa: float | list[float] | None = Field(
        None, description="condition number of Σ = XᵀX/n (exact, >= 1); null: the paper's Gaussian design; "
                          "a list: one dataset (and grid point on the kappa axis) per value")
    spectrum: Spectrum | Annotated[list[Spectrum], Field(min_length=1)] = Field(
        "geometric", description="shape of Σ's eigenvalue profile when kappa is set; a list: one dataset "
                                 "(and grid point on the spectrum axis) per value")
    wstar: WStar | Annotated[list[WStar], Field(min_length=1)] = Field(
        "random", description="direction of w* relative to Σ's eigenvectors when kappa is set; a list: one "
                              "dataset (and grid point on the wstar axis) per value")
    file: str | None = Field(None, description="a user's .npz with X, y (optionally X_test, y_test) instead "
                                               "of generated data; n, d, noise, kappa are then ignored")

    @field_validator("kappa")
    @classmethod
    def _kappa(cls, v):
        values = v if isinstance(v, list) else [] if v is None else [v]
        if isinstance(v, list) and not v:
            raise ValueError("kappa must be null, a number >= 1 or a non-empty list, got []")
        bad = [k for k in values if not (np.isfinite(k) and k >= 1)]
        if bad:
            raise ValueError(f"kappa must be >= 1, got {bad[0]}")
        return v

    @field_validator("file")
    @classmethod
    def _file_is_data(cls, v):
        """The file is read when the config is parsed (shapes, finiteness), before any job starts."""
        if v is None:
            return v
        if not Path(v).is_file():
            raise ValueError(f"data file {v!r} does not exist (paths are relative to the working directory)")
        from dlnpipe.data import load_dataset

        load_dataset(v)  # its ValueError names the file and what is wrong with it
        return v

    def kappas(self) -> list[float | None]:
        if self.file is not None or self.kappa is None:
            return [None]
        return [float(k) for k in (self.kappa if isinstance(self.kappa, list) else [self.kappa])]

    def points(self) -> list[tuple[float | None, str, str]]:
        """(kappa, spectrum, wstar) of every dataset: ``gaussian`` for the paper's design, ``file``
        for a user's file (neither has a prescribed spectrum or w* direction)."""
        if self.file is not None:
            return [(None, "file", "file")]
        if self.kappa is None:
            return [(None, "gaussian", "gaussian")]
        listed = lambda v: v if isinstance(v, list) else [v]  # noqa: E731
        return [(k, s, w) for k in self.kappas() for s in listed(self.spectrum) for w in listed(self.wstar)]

    def several_shapes(self) -> bool:
        """True when the datasets differ in spectrum or w* direction (their ids then say so)."""
        return len({(s, w) for _, s, w in self.points()}) > 1


class RunConfig(Strict):
    lr: Values = Field(description="learning rate(s) η (a value, a list, linspace or logspace)")
    steps: int = Field(ge=0, description="gradient steps for these learning rates")
    seeds: int = Field(ge=1, description="networks per (init, depth, width, kappa, lr, scale) grid point")

    @field_validator("lr")
    @classmethod
    def _positive(cls, v):
        bad = [x for x in expand(v) if not x > 0]
        if bad:
            raise ValueError(f"learning rates must be > 0, got {bad[0]}")
        return v


PER_NETWORK_OPTIONS = tuple(steppers.OPTIONS)  # settable per grid point


class OptimizerConfig(Strict):
    """One optimizer of an experiment's ``optimizer`` list; a list value makes one grid point per entry."""

    name: OptimizerName = Field(description="the optimizer (dlnpipe.steppers)")
    momentum: float | Annotated[list[float], Field(min_length=1)] | None = Field(
        None, description=steppers.OPTIONS["momentum"].description)
    betas: tuple[float, float] | Annotated[list[tuple[float, float]], Field(min_length=1)] | None = Field(
        None, description=steppers.OPTIONS["betas"].description)
    eps: float | Annotated[list[float], Field(min_length=1)] | None = Field(
        None, description=steppers.OPTIONS["eps"].description)
    batch_size: int | Annotated[list[int], Field(min_length=1)] | None = Field(
        None, description=steppers.OPTIONS["batch_size"].description)
    label_noise: float | Annotated[list[float], Field(min_length=1)] | None = Field(
        None, description=steppers.OPTIONS["label_noise"].description)

    @model_validator(mode="after")
    def _options(self):
        cls = steppers.get(self.name)
        given = [k for k in PER_NETWORK_OPTIONS if getattr(self, k) is not None]
        for key in given:
            if key not in cls.per_network:
                takes = ", ".join(cls.per_network) or "none"
                raise ValueError(f"optimizer {self.name!r} takes no option {key!r}; its options: {takes}")
            for value in self.values(key):
                cls.variant({key: value}).check(key, np.asarray(value, dtype=float))
        return self

    def values(self, key: str) -> list:
        """The values of option ``key`` (a list, one per grid point)."""
        v = getattr(self, key)
        if v is None:
            return []
        if key == "betas":
            return [tuple(v)] if isinstance(v, tuple) else [tuple(x) for x in v]
        return list(v) if isinstance(v, list) else [v]

    def points(self) -> list[dict]:
        """The settings of each grid point of this entry: the product of the listed values."""
        given = [k for k in PER_NETWORK_OPTIONS if getattr(self, k) is not None]
        return [dict(zip(given, combo)) for combo in itertools.product(*(self.values(k) for k in given))]


class OptimPoint(Strict):
    """One optimizer setting of an experiment: a point of the cube's ``optim`` axis."""

    label: str
    name: str
    settings: dict

    def resolved(self, n: int) -> dict:
        """Every option of this setting's optimizer, with the optimizer's defaults where the setting
        leaves one out (the batch size of gd and sgd: n, the whole training set), betas as beta1, beta2."""
        cls = steppers.get(self.name).variant(self.settings)
        out = cls.resolved_options(self.settings, n)
        for name, option in steppers.OPTIONS.items():
            if name in out and len(option.coordinates) > 1:  # a pair: one coordinate each
                out |= dict(zip(option.coordinates, out.pop(name)))
        return out


def optim_label(name: str, settings: dict) -> str:
    """``gd``, ``heavy_ball:momentum=0.9``, ``adam:betas=0.9/0.999,eps=1e-08``, ``sgd:batch_size=5``."""
    def text(v):
        return "/".join(repr(float(x)) for x in v) if isinstance(v, tuple) else repr(v)
    return name if not settings else name + ":" + ",".join(f"{k}={text(v)}" for k, v in settings.items())


class ExperimentConfig(Strict):
    description: str = Field("", description="what the experiment reproduces (free text)")
    data: DataConfig = Field(default_factory=DataConfig, description="the dataset(s)")
    inits: Annotated[list[ArchName], Field(min_length=1)] = Field(
        description="architectures/initialisations: " + "; ".join(f"{a.name} ({a.description})"
                                                                   for a in archs.ARCHITECTURES.values()))
    depths: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)] = Field(
        description="numbers of trained layers L")
    widths: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)] = Field(
        description="hidden widths m")
    scales: Values = Field(description="initialisation scales s (a value, a list, linspace or logspace)")
    runs: Annotated[list[RunConfig], Field(min_length=1)] = Field(
        description="learning rates with their step counts and numbers of seeds")
    dtype: Literal["float32", "float64"] = Field("float32", description="training precision (paper: float32)")
    record_every: int = Field(100, ge=1, description="trajectory sampling period, in steps")
    record_sharpness: bool = Field(False, description="also record the Lanczos sharpness along trajectories (of the "
                                                      "optimizers that step: not flow or central, which record their "
                                                      "own)")
    record_eos: bool = Field(False, description="with record_sharpness: also phi_t, the sharpness of the gradient-flow "
                                                "solution from each sampled iterate (a flow to convergence per sample, "
                                                "docs/theory.md#the-gradient-flow-solution), and the balancing gaps "
                                                "there")
    sharpness_k: int = Field(3, ge=1, description="number of top Hessian eigenvalues measured at the end")
    trace_method: Literal["hutchinson", "exact"] = Field(
        "hutchinson", description="how the Hessian's trace is measured at init and at the end: hutchinson "
                                  "(trace_probes Rademacher probes, with a standard error) or exact (the diagonal "
                                  "by one Hessian-vector product per parameter)")
    trace_probes: int = Field(32, ge=2, description="Hutchinson probes per network")
    density: bool = Field(False, description="also measure the Hessian's spectral density (stochastic Lanczos "
                                             "quadrature) at init and at the end")
    density_probes: int = Field(4, ge=1, description="start vectors per network for the spectral density")
    density_steps: int = Field(40, ge=1, description="Lanczos steps per start vector (quadrature nodes; at most "
                                                     "the number of parameters)")
    optimizer: OptimizerName | OptimizerConfig | Annotated[list[OptimizerName | OptimizerConfig],
                                                           Field(min_length=1)] = Field(
        "gd", description="gd: gradient descent with step lr; flow: gradient flow dW/dt = −∇R integrated by an "
                          "adaptive Dormand–Prince 5(4) solver to time lr·steps (lr then only sets the time "
                          "scale and the sampling times lr·record_every); heavy_ball: momentum; adam; sgd: "
                          "mini-batches; central: the central flow of GD with step lr (its time-averaged path at the "
                          "edge of stability, docs/theory.md#the-central-flow; float64). A {name, options} entry "
                          "(options: experiments.<name>.optimizer[] below), or a "
                          "list of names and entries: one point of the cube's optim axis per entry and per value of "
                          "a listed option (every network of the grid is "
                          "trained by each; the same seeds, so the same initial weights)")
    flow_rtol: Positive = Field(1e-8, description="relative error tolerance of the flow solver (per step, on the "
                                                  "weights)")
    flow_atol: Positive = Field(1e-10, description="absolute error tolerance of the flow solver")
    flow_max_steps: int = Field(100_000, ge=1, description="accepted solver steps after which a network's flow stops "
                                                           "(stiff trajectories, e.g. from a large init); it is then "
                                                           "reported as failed unless it had converged")
    scale_unit: Literal["absolute", "inv_sqrt_width"] = Field(
        "absolute", description="small and gelu inits: absolute: entries N(0, s²) (the paper); inv_sqrt_width: "
                                "the scales are in units of 1/√m, entries N(0, s²/m), so that grids compare "
                                "across widths (residual init is always I + s/√(L·m) N)")
    rtol: Positive = Field(1e-6, description="converged if R − R* ≤ rtol·R* + atol·yᵀy/n at the end (the "
                                             "float32 floor of R − R* is about 1e-8; networks oscillating at "
                                             "the edge of stability sit at 1e-6 to 1e-3)")
    atol: Positive = Field(1e-7, description="absolute part of the convergence test, relative to yᵀy/n")
    batch_datasets: bool = Field(
        False, description="one job per (init, depth, width) trains the networks of all the experiment's datasets "
                           "(kappa × spectrum × wstar) in one batch; linear inits only, GELU cells stay one per "
                           "dataset. Makes dataset sweeps cheap (fewer, larger jobs)")
    split: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="jobs per cell: the cell's networks are dealt into this many parts of equal cost "
                            "(parallelism for long cells); auto: as many as keep each job's estimated training "
                            "cost under about 1e12 floating-point operations (half a minute of one core)")
    figures: list[FigureName] = Field(
        default_factory=list, description="figures drawn from this experiment")

    def optim_points(self) -> list[OptimPoint]:
        """The experiment's optimizer settings, in config order (one for a plain ``optimizer: name``)."""
        entries = self.optimizer if isinstance(self.optimizer, list) else [self.optimizer]
        out = []
        for entry in entries:
            entry = OptimizerConfig(name=entry) if isinstance(entry, str) else entry
            out += [OptimPoint(label=optim_label(entry.name, s), name=entry.name, settings=s) for s in entry.points()]
        return out

    def optim_settings(self, labels, n: int) -> dict[str, np.ndarray]:
        """Each optim label's resolved option values (:meth:`OptimPoint.resolved`) as float arrays along
        ``labels``, one per option coordinate of :data:`dlnpipe.steppers.OPTIONS` (momentum, beta1, beta2,
        ...): the cube's optim coordinates and what a stability threshold reads; NaN where a label's
        optimizer has no such option."""
        points = {p.label: p.resolved(n) for p in self.optim_points()}
        names = [c for option in steppers.OPTIONS.values() for c in option.coordinates]
        return {c: np.array([float(points[str(label)].get(c, np.nan)) for label in labels]) for c in names}

    def optimizers(self) -> list[str]:
        """The names of the experiment's optimizers, each once."""
        return list(dict.fromkeys(p.name for p in self.optim_points()))

    def stepper_options(self, optimizer: str) -> dict:
        """The keys of this experiment that configure ``optimizer``'s stepper (dlnpipe.steppers), by name."""
        return {k: getattr(self, k) for k in steppers.get(optimizer).options
                if k in type(self).model_fields and k != "optimizer"}

    @field_validator("scales")
    @classmethod
    def _nonneg(cls, v):
        bad = [x for x in expand(v) if not x >= 0]
        if bad:
            raise ValueError(f"init scales must be >= 0, got {bad[0]}")
        return v

    @model_validator(mode="after")
    def _optimizers(self):
        if self.record_sharpness and not any(steppers.get(o).records_sharpness for o in self.optimizers()):
            raise ValueError("record_sharpness samples GD trajectories; it is not available with optimizer: "
                             + ", ".join(self.optimizers()))
        if self.record_eos and not self.record_sharpness:
            raise ValueError("record_eos samples phi where the sharpness is sampled: it needs record_sharpness: true")
        labels = [p.label for p in self.optim_points()]
        if len(set(labels)) < len(labels):
            raise ValueError(f"optimizer lists {sorted(x for x in set(labels) if labels.count(x) > 1)[0]!r} twice")
        if self.data.file is None:
            big = [p.settings["batch_size"] for p in self.optim_points()
                   if p.settings.get("batch_size", 0) > self.data.n]
            if big:
                raise ValueError(f"batch_size must be <= n ({self.data.n}), got {big[0]}")
        return self

    @model_validator(mode="after")
    def _widths(self):
        if self.data.file is None:  # a user's file: d is known when it is read
            for init in self.inits:
                for m in self.widths:
                    error = archs.get(init).width_error(m, self.data.d)
                    if error:
                        raise ValueError(error)
        return self


class SpecError(ConfigError):
    """A stage job read a key of its experiment that its spec does not carry."""


class StageExperiment(ExperimentConfig):
    """An experiment's config as one stage's job sees it: built from the job's spec, which carries only the
    keys that stage's outputs depend on (:data:`dlnpipe.grid.STAGE_KEYS`). Reading any other key is a
    :class:`SpecError` naming it, never the key's default; every key read is noted (:meth:`read_keys`)."""

    _stage: str = PrivateAttr("")
    _keys: frozenset = PrivateAttr(frozenset())
    _read: set = PrivateAttr(default_factory=set)
    _filed: dict = PrivateAttr(default_factory=dict)

    @classmethod
    def of(cls, raw: dict, stage: str, filed: dict[str, str] | None = None) -> StageExperiment:
        """The view of ``raw`` (a spec's experiment) for ``stage``; ``filed``: each key's stage, for the error."""
        view = cls.model_validate(raw)
        private = object.__getattribute__(view, "__pydantic_private__")
        private.update(_stage=stage, _keys=frozenset(raw), _filed=dict(filed or {}))
        return view

    def __getattribute__(self, name: str):
        if name in _EXPERIMENT_KEYS:
            try:
                private = object.__getattribute__(self, "__pydantic_private__")
            except AttributeError:  # being validated: the validators see every key
                private = None
            if private and private.get("_stage"):
                if name not in private["_keys"]:
                    owner = private["_filed"].get(name, "?")
                    raise SpecError(f"the {private['_stage']} stage read experiment key {name!r}, which its job's "
                                    f"spec does not carry: dlnpipe.grid.STAGE_KEYS files it under {owner!r}, a stage "
                                    f"{private['_stage']} does not build on (file it where it is read)")
                private["_read"].add(name)
        return super().__getattribute__(name)

    def read_keys(self) -> list[str]:
        """The experiment keys read so far through this view."""
        return sorted(object.__getattribute__(self, "__pydantic_private__")["_read"])


_EXPERIMENT_KEYS = frozenset(ExperimentConfig.model_fields)


class MlflowConfig(Strict):
    enabled: bool = Field(True, description="log every training configuration to MLflow (local rules only)")
    tracking_uri: str | None = Field(
        None, description="tracking store; null: sqlite:///<absolute path>/results/mlflow.db. The environment "
                          "variable MLFLOW_TRACKING_URI, when set, overrides both (e.g. a server for clusters)")
    experiment_prefix: str = Field("dlnpipe/", description="MLflow experiment name = prefix + study name + / + "
                                                           "experiment name")


STUDY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class StudyConfig(Strict):
    study: Annotated[str, Field(pattern=STUDY_NAME)] | None = Field(
        None, description="the study's name: everything it produces lives in results/<study>/ and its MLflow "
                          "experiments are <prefix><study>/<experiment>; null: the config file's name "
                          "(config.yaml: default)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where training and Lanczos run: auto uses CUDA when torch sees a GPU")
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig, description="experiment tracking")
    experiments: Annotated[dict[Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")], ExperimentConfig],
                           Field(min_length=1)] = Field(description="the experiments of the study, by name")


_TYPE_TAGS = {"float", "int", "str", "bool", "none", "Linspace", "Logspace"}


def _format_error(err: ValidationError) -> str:
    # of the alternatives of a union, the one that got furthest (our own checks first) says what is wrong
    e = max(err.errors(), key=lambda x: (x["type"] in ("value_error", "extra_forbidden"), len(x["loc"])))
    loc = list(e["loc"])
    head, rest = (loc[:2], loc[2:]) if loc[:1] == ["experiments"] else ([], loc)
    # drop the union-member tags pydantic puts in locations ("float", "list[float]", "function-after[...]")
    rest = [p for p in rest if isinstance(p, int) or (p not in _TYPE_TAGS and "[" not in p and "-" not in p)]
    where = ".".join(str(p) for p in head + rest) or "config"
    if e["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    msg = e["msg"].removeprefix("Value error, ")
    value = e.get("input")
    if e["type"] == "value_error":  # our own validators already name the value
        return f"{where}: {msg}"
    shown = json.dumps(value, default=str, ensure_ascii=False)
    return f"{where}: {msg} (got {shown if len(shown) <= 80 else shown[:77] + '...'})"


def validate(raw: dict) -> StudyConfig:
    """Validate a config mapping; raise ConfigError with one line naming the key and the value."""
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping, got {type(raw).__name__}")
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def study_name(cfg: StudyConfig, config_files=()) -> str:
    """The study's name: its ``study`` key, else the stem of the last config file given (``config.yaml``, the
    repository's default study, is ``default``), else ``default``."""
    if cfg.study:
        return cfg.study
    files = [Path(f) for f in config_files]
    if not files or files[-1].name == "config.yaml":
        return "default"
    return files[-1].stem  # checked as a name where it becomes a directory (dlnpipe.studies.study_dir)


def load(path: str | Path) -> StudyConfig:
    with open(path) as f:
        return validate(yaml.safe_load(f))


def json_schema() -> dict:
    schema = StudyConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "dlnpipe study configuration (generated from dlnpipe.config.StudyConfig)"
    return schema
