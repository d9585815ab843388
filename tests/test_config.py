"""The study config: one-line errors naming key and value, the schema in sync, the paper's experiments."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from dlnpipe import config as cfgmod
from dlnpipe.config import ConfigError, expand, validate
from dlnpipe.grid import all_networks, cells, derived_seed, networks

ROOT = Path(__file__).resolve().parents[1]


def study(**overrides):
    exp = {"inits": ["small"], "depths": [2], "widths": [3], "scales": [0.1],
           "runs": [{"lr": 0.1, "steps": 10, "seeds": 2}], "data": {"n": 10, "d": 3}}
    exp.update(overrides)
    return {"device": "cpu", "experiments": {"e": exp}}


@pytest.mark.parametrize("raw,pattern", [
    (study(bogus=1), r"^experiments\.e\.bogus: unknown key$"),
    ({"device": "tpu", "experiments": study()["experiments"]}, r"^device: .*'auto', 'cpu' or 'cuda' \(got \"tpu\"\)$"),
    (study(depths="ten"), r"^experiments\.e\.depths: .*valid list \(got \"ten\"\)$"),
    (study(depths=[0]), r"^experiments\.e\.depths\.0: .*greater than or equal to 1 \(got 0\)$"),
    (study(widths=[3.5]), r"^experiments\.e\.widths\.0: .* \(got 3\.5\)$"),
    (study(data={"kappa": 0.5}), r"^experiments\.e\.data\.kappa: kappa must be >= 1, got 0\.5$"),
    (study(data={"kappa": [10, 0.9]}), r"^experiments\.e\.data\.kappa: kappa must be >= 1, got 0\.9$"),
    (study(depths=[]), r"^experiments\.e\.depths: List should have at least 1 item.* \(got \[\]\)$"),
    (study(runs=[]), r"^experiments\.e\.runs: List should have at least 1 item"),
    ({"experiments": {}}, r"^experiments: Dictionary should have at least 1 item"),
    (study(runs=[{"lr": 0.0, "steps": 10, "seeds": 1}]),
     r"^experiments\.e\.runs\.0\.lr: learning rates must be > 0, got 0\.0$"),
    (study(runs=[{"lr": [0.1, -1], "steps": 10, "seeds": 1}]), r"runs\.0\.lr: learning rates must be > 0, got -1\.0$"),
    (study(scales=[-0.1]), r"^experiments\.e\.scales: init scales must be >= 0, got -0\.1$"),
    (study(inits=["residual"], widths=[2]),
     r"^experiments\.e: residual networks need width >= d \(.*\), got width=2 with d=3$"),
    (study(inits=["cnn"]), r"^experiments\.e\.inits\.0: .* \(got \"cnn\"\)$"),
    (study(data={"file": "/nonexistent/data.npz"}), r"data\.file: data file '/nonexistent/data\.npz' does not exist"),
    (study(optimizer=[{"name": "heavy_ball", "momentum": [0.5, 1.0]}]),
     r"^experiments\.e\.optimizer\.0: momentum must be in \[0, 1\), got 1$"),
    (study(optimizer=["gd", {"name": "adam", "betas": [0.9, -0.1]}]),
     r"^experiments\.e\.optimizer\.1: betas must be in \[0, 1\), got -0\.1$"),
    (study(optimizer=[{"name": "adam", "eps": 0}]), r"^experiments\.e\.optimizer\.0: eps must be > 0, got 0$"),
    (study(optimizer=[{"name": "sgd", "batch_size": 11}]), r"^experiments\.e: batch_size must be <= n \(10\), got 11$"),
    (study(optimizer=[{"name": "sgd", "batch_size": 0}]),
     r"^experiments\.e\.optimizer\.0: batch_size must be an integer >= 1, got 0$"),
    (study(optimizer=[{"name": "gd", "label_noise": -0.5}]),
     r"^experiments\.e\.optimizer\.0: label_noise must be >= 0, got -0\.5$"),
    (study(optimizer=[{"name": "adam", "momentum": 0.9}]),
     r"^experiments\.e\.optimizer\.0: optimizer 'adam' takes no option 'momentum'; its options: betas, eps$"),
    (study(optimizer=[{"name": "gd", "batch_size": 5}]),
     r"^experiments\.e\.optimizer\.0: optimizer 'gd' takes no option 'batch_size'; its options: label_noise$"),
    (study(optimizer=[{"name": "heavy_ball", "lr": 0.1}]), r"^experiments\.e\.optimizer\.0\.lr: unknown key$"),
    (study(optimizer=["gd", "gd"]), r"^experiments\.e: optimizer lists 'gd' twice$"),
    (study(optimizer=[{"name": "adamw"}]), r"^experiments\.e\.optimizer\.0\.name: .*'sgd' \(got \"adamw\"\)$"),
])
def test_config_errors_are_one_line(raw, pattern):
    with pytest.raises(ConfigError) as err:
        validate(raw)
    message = str(err.value)
    assert "\n" not in message
    assert __import__("re").search(pattern, message), message


def test_schema_file_is_generated_from_the_model():
    on_disk = json.loads((ROOT / "workflow/schemas/config.schema.json").read_text())
    assert on_disk == json.loads(json.dumps(cfgmod.json_schema())), "run: python -m dlnpipe schema --out ..."


def test_every_key_is_described():
    def walk(schema, defs, path):
        for name, prop in schema.get("properties", {}).items():
            assert prop.get("description"), f"{path}.{name} has no description"
            for ref in [prop.get("$ref")] + [a.get("$ref") for a in prop.get("anyOf", [])]:
                if ref:
                    walk(defs[ref.split("/")[-1]], defs, f"{path}.{name}")
    schema = cfgmod.json_schema()
    walk(schema, schema["$defs"], "config")


def test_default_config_holds_the_paper_experiments():
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg = validate(raw)
    for name in ("fig1", "fig1cd", "resnet", "fig2", "under", "gelu"):
        assert name in cfg.experiments
    fig1 = cfg.experiments["fig1"]
    assert [(r.lr, r.steps, r.seeds) for r in fig1.runs] == [
        (0.005, 40000, 20), (0.02, 10000, 20), (0.07, 4000, 20), (0.1, 4000, 20), (0.2, 2000, 80)]
    np.testing.assert_allclose(expand(fig1.scales), np.linspace(0.25, 0.6, 10))
    assert (fig1.depths, fig1.widths, fig1.data.n, fig1.data.d) == ([10], [5], 50, 5)
    fig2 = cfg.experiments["fig2"]
    assert fig2.depths == [5, 10, 20, 40] and len(expand(fig2.runs[0].lr)) == 25
    lrs = expand(fig2.runs[0].lr)
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(10**-0.3)
    under = cfg.experiments["under"]
    assert (under.data.n, under.data.d, under.depths, under.runs[0].seeds) == (15, 20, [5], 100)
    gelu = cfg.experiments["gelu"]
    assert gelu.inits == ["gelu"] and gelu.runs[0].steps == 160000 and gelu.data.noise == 0


def test_seeds_are_derived_from_coordinates():
    cfg = validate(study(scales=[0.1, 0.2]))
    exp = cfg.experiments["e"]
    base = all_networks(exp, "e", "small", 2, 3, [("paper", None)])
    grown = validate(study(scales=[0.1, 0.15, 0.2], runs=[{"lr": 0.1, "steps": 10, "seeds": 3}]))
    more = all_networks(grown.experiments["e"], "e", "small", 2, 3, [("paper", None)])
    lookup = {(lr, s, i): seed for lr, s, i, seed in zip(more.lr, more.scale, more.seed_index, more.seed)}
    for lr, s, i, seed in zip(base.lr, base.scale, base.seed_index, base.seed):
        assert lookup[(lr, s, i)] == seed
    assert len(set(more.seed)) == len(more)
    assert derived_seed("e", "small", 2, 3, "paper", 0.1, 0.1, 0) == derived_seed("e", "small", 2, 3, "paper",
                                                                                  0.1, 0.1, 0)


def test_logspace_values_are_correctly_rounded_on_every_cpu(monkeypatch):
    """Grid values are seeds (their repr is hashed): logspace gives 10^x correctly rounded, checked against
    mpmath at 300 bits, so no CPU's vectorised numpy.power (SVML on AVX-512) can change a network. 10^-1.25
    is the quick study's case: 0.49 ulp from the float64 it must be, 0.51 ulp from the one SVML gives."""
    import mpmath

    mpmath.mp.prec = 300
    xs = np.concatenate([np.linspace(-2.0, -0.3, 25), np.linspace(-2.0, -0.5, 3),
                         np.random.default_rng(0).uniform(-12, 12, 2000)])
    for x in xs:
        assert cfgmod.exp10(x) == float(mpmath.power(10, mpmath.mpf(float(x)))), x
    assert expand(cfgmod.Logspace(logspace=(-2, -0.5, 3))) == [0.01, 0.05623413251903491, 0.31622776601683794]
    # numpy.power that rounds the other way (as on an AVX-512 CPU) changes neither the values nor the seeds
    seeds = all_networks(validate(study(runs=[{"lr": {"logspace": [-2, -0.5, 3]}, "steps": 10, "seeds": 2}]))
                         .experiments["e"], "e", "small", 2, 3, [("paper", None)]).seed
    monkeypatch.setattr(np, "power", lambda b, x: np.nextafter(np.float_power(b, x), 0))
    monkeypatch.setattr(np, "logspace", lambda *a, **k: np.nextafter(np.power(10.0, np.linspace(*a)), 0))
    again = all_networks(validate(study(runs=[{"lr": {"logspace": [-2, -0.5, 3]}, "steps": 10, "seeds": 2}]))
                         .experiments["e"], "e", "small", 2, 3, [("paper", None)]).seed
    np.testing.assert_array_equal(again, seeds)


def test_split_deals_networks_into_parts_of_equal_cost():
    cfg = validate(study(split=3, runs=[{"lr": 0.1, "steps": 1000, "seeds": 5}, {"lr": 0.2, "steps": 10, "seeds": 7}]))
    parts = [c for c in cells(cfg)]
    assert [c.id for c in parts] == [f"small-L2-m3-paper-p{i}" for i in range(3)]
    nets = [networks(cfg.experiments["e"], c) for c in parts]
    seeds = np.concatenate([n.seed for n in nets])
    assert len(seeds) == 12 and len(set(seeds)) == 12
    costs = [int(n.steps.sum()) for n in nets]
    assert max(costs) - min(costs) <= 1000


def test_auto_split_keeps_every_job_under_the_cost_budget():
    """split: auto (the default) deals a cell into as many parts as its estimated cost needs; an explicit
    split is kept; the default study has no training job far above the budget."""
    from dataclasses import replace

    from dlnpipe.grid import AUTO_SPLIT_FLOPS, cost

    cfg = validate(study(inits=["gelu", "small"], depths=[10], widths=[5], data={"n": 50, "d": 5},
                         runs=[{"lr": 0.005, "steps": 160_000, "seeds": 200}]))
    exp = cfg.experiments["e"]
    parts = {init: [c for c in cells(cfg) if c.init == init] for init in ("gelu", "small")}
    whole = cost(exp, replace(parts["gelu"][0], part=0, parts=1))
    assert len(parts["gelu"]) == int(np.ceil(whole / AUTO_SPLIT_FLOPS)) >= 2
    assert max(cost(exp, c) for c in parts["gelu"]) <= 1.05 * AUTO_SPLIT_FLOPS
    assert len(parts["small"]) == 1  # a linear step costs ~1/50 of a GELU step at this size: one job
    assert [c.parts for c in cells(validate(study(split=3)))] == [3, 3, 3]
    default = validate(yaml.safe_load((ROOT / "config.yaml").read_text()))
    assert max(cost(default.experiments[c.experiment], c) for c in cells(default)) <= 1.05 * AUTO_SPLIT_FLOPS


def test_optimizer_grid_points_and_cells():
    """An optimizer list is the optim axis: one point per entry and listed value, one cell per optimizer,
    the same seeds (so the same initial weights) for every setting, and per-network options with defaults."""
    from dlnpipe.grid import optimizer_options

    cfg = validate(study(optimizer=["gd", {"name": "gd", "label_noise": 0.5},
                                    {"name": "sgd", "batch_size": [2, 5], "label_noise": [0.0, 0.1]},
                                    {"name": "adam", "betas": [[0.9, 0.999], [0.5, 0.9]]}]))
    exp = cfg.experiments["e"]
    assert [p.label for p in exp.optim_points()] == [
        "gd", "gd:label_noise=0.5", "sgd:batch_size=2,label_noise=0.0", "sgd:batch_size=2,label_noise=0.1",
        "sgd:batch_size=5,label_noise=0.0", "sgd:batch_size=5,label_noise=0.1", "adam:betas=0.9/0.999",
        "adam:betas=0.5/0.9"]
    by_cell = {c.optimizer: c for c in cells(cfg)}
    assert list(by_cell) == ["gd", "sgd", "adam"] and by_cell["sgd"].id == "small-L2-m3-paper-sgd-p0"
    assert by_cell["gd"].id == "small-L2-m3-paper-p0"  # a gd cell keeps the id it always had
    gd, sgd = networks(exp, by_cell["gd"]), networks(exp, by_cell["sgd"])
    assert len(gd) == 2 * 2 and len(sgd) == 4 * 2
    assert set(sgd.seed) == set(gd.seed)  # the same initial weights under every optimizer
    opts = optimizer_options(exp, "gd", gd.optim, n=10)
    np.testing.assert_array_equal(opts["label_noise"], [0.0 if o == "gd" else 0.5 for o in gd.optim])
    opts = optimizer_options(exp, "adam", networks(exp, by_cell["adam"]).optim, n=10)
    assert opts["betas"].shape == (4, 2)
    assert exp.optim_points()[0].resolved(10) == {"label_noise": 0.0, "batch_size": 10}
    assert exp.optim_points()[-1].resolved(10) == {"eps": 1e-8, "beta1": 0.5, "beta2": 0.9}


def test_study_name_from_its_key_or_its_config_file():
    """A study's name (its directory results/<study>/): the `study:` key, else the config file's name."""
    from dlnpipe.config import study_name
    from dlnpipe.studies import study_dir

    root = Path(__file__).resolve().parents[1]
    for path, name in (("config.yaml", "default"), ("workflow/configs/quick.yaml", "quick"),
                       ("workflow/configs/bounds_full.yaml", "bounds_full")):
        assert study_name(cfgmod.load(root / path), [root / path]) == name
    unnamed = validate(study())
    assert study_name(unnamed, ["/home/me/my_question.yaml"]) == "my_question"
    assert study_name(unnamed, ["config.yaml"]) == study_name(unnamed, []) == "default"
    assert study_name(validate({**study(), "study": "mine"}), ["other.yaml"]) == "mine"
    with pytest.raises(ConfigError, match=r"^study: 'cube.zarr' is the name of an entry of results/"):
        study_dir("results", "cube.zarr")
    assert study_name(unnamed, ["my question.yaml"]) == "my question"  # a file's name, checked as a directory:
    with pytest.raises(ConfigError, match=r"^study: 'my question' is not a study name .*`study:` key"):
        study_dir("results", "my question")
    with pytest.raises(ConfigError, match=r"^study: String should match pattern"):
        validate({**study(), "study": "../elsewhere"})


def test_optimizer_may_be_one_mapping():
    """`optimizer: {name: adam, ...}` (the type the configuration page gives) is one entry, as in a list."""
    one = validate(study(optimizer={"name": "heavy_ball", "momentum": [0.5, 0.9]})).experiments["e"]
    listed = validate(study(optimizer=[{"name": "heavy_ball", "momentum": [0.5, 0.9]}])).experiments["e"]
    assert [p.label for p in one.optim_points()] == [p.label for p in listed.optim_points()] == [
        "heavy_ball:momentum=0.5", "heavy_ball:momentum=0.9"]
    with pytest.raises(ConfigError, match="takes no option 'momentum'"):
        validate(study(optimizer={"name": "adam", "momentum": 0.5}))
