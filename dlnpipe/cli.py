"""``python -m dlnpipe <stage>``: the command line the workflow's rules call (one code path for
Snakemake, cluster jobs and a user running one cell by hand).

    python -m dlnpipe validate config.yaml
    python -m dlnpipe cells config.yaml                       # list the cells (jobs) of a study
    python -m dlnpipe train --config config.yaml --experiment fig1 --cell small-L10-m5-paper-p0 \\
        --data results/default/data/fig1/paper.npz --out /tmp/cell.npz
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dlnpipe import config as config_mod
from dlnpipe.config import ConfigError


def _spec(args) -> dict:
    """The job spec: given as JSON (the rules) or looked up from a config file and a cell id (by hand)."""
    if args.spec:
        return json.loads(args.spec)
    if not (args.config and args.experiment and args.cell):
        raise SystemExit("give --spec JSON, or --config FILE --experiment NAME --cell ID")
    from dlnpipe.grid import cells

    cfg = config_mod.load(args.config)
    for c in cells(cfg):
        if c.experiment == args.experiment and c.id == args.cell:
            return c.spec(cfg, args.command)
    raise SystemExit(f"no cell {args.cell!r} in experiment {args.experiment!r} of {args.config}")


def _setup(args) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def cmd_validate(args):
    cfg = config_mod.load(args.config)
    from dlnpipe.grid import cells, datasets

    print(f"{args.config}: OK ({len(cfg.experiments)} experiments, {len(datasets(cfg))} datasets, "
          f"{len(cells(cfg))} cells)")


def cmd_cells(args):
    from dlnpipe.grid import cells, networks

    cfg = config_mod.load(args.config)
    for c in cells(cfg):
        net = networks(cfg.experiments[c.experiment], c)
        print(f"{c.experiment}/{c.id}\t{len(net)} networks\t{int(net.steps.sum())} network-steps")


def cmd_study(args):
    cfg = config_mod.load(args.config)
    name = config_mod.study_name(cfg, [args.config])
    from dlnpipe.studies import study_dir

    print(study_dir("results", name) if args.dir else name)


def cmd_ui_links(args):
    from dlnpipe.tracking import COMPARE_MAX, ui_links

    which = f"study {args.study}" if args.study else "every study"
    print(f"MLflow UI: {args.base}  (store: {args.uri}; {which}). Per experiment: its training runs (a row per "
          f"configuration, its coordinates and key metrics as columns) and, up to {COMPARE_MAX} configurations, "
          "their comparison (every param and metric of every configuration, nothing to click). On a first visit "
          "to a local server MLflow opens its Assistant panel by itself: its × closes it for good.")
    prefix = f"{args.prefix}{args.study}/" if args.study else args.prefix
    for link in ui_links(args.uri, args.base, prefix=prefix):
        print(f"  {link['name']} ({link['configurations']} configurations)\n    runs:    {link['runs']}")
        if link["compare"]:
            print(f"    compare: {link['compare']}")


def cmd_new(args):
    from dlnpipe.scaffold import new_study

    written = new_study(args.directory, name=args.name)
    print(f"dlnpipe new: wrote {len(written)} files in {args.directory}: "
          + ", ".join(str(p.relative_to(args.directory)) for p in written[:3]) + ", profiles/")
    print(f"next: cd {args.directory} && snakemake --cores all    (README.md there: the report, the MLflow UI)")


def cmd_ui(args):
    """The MLflow UI on the study directory's store, after the links of its experiments (what `make ui` does)."""
    import os

    uri = args.uri or f"sqlite:///{Path('results/mlflow.db').resolve()}"
    base = f"http://{args.host}:{args.port}"
    cmd_ui_links(argparse.Namespace(uri=uri, base=base, study=args.study, prefix=args.prefix))
    command = ["mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    print(" ".join(command), flush=True)
    os.execv(sys.executable, [sys.executable, "-m", *command])


def cmd_unlock(args):
    from dlnpipe.locks import unlock_if_stale

    print(f"dlnpipe unlock: {unlock_if_stale(args.directory, other_hosts=args.other_hosts)}")


def cmd_schema(args):
    text = json.dumps(config_mod.json_schema(), indent=2, ensure_ascii=False) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)


def cmd_docs(args):
    from dlnpipe import reference

    for path in reference.write(args.out, default_config=args.config):
        print(f"wrote {path}")


def cmd_data(args):
    from dlnpipe.config import DataConfig
    from dlnpipe.stages import make_data

    spec = json.loads(args.spec)
    make_data.run(DataConfig.model_validate(spec["data"]), spec["kappa"], args.out,
                  spectrum=spec.get("spectrum"), wstar=spec.get("wstar"),
                  experiment=spec.get("experiment", ""), data_id=spec.get("data_id", ""))


def cmd_train(args):
    from dlnpipe.stages import train_cell

    train_cell.run(_spec(args), args.data, args.out, device=args.device)


def cmd_measure(args):
    from dlnpipe.stages import measure

    measure.run(_spec(args), args.data, args.train, args.out, device=args.device)


def cmd_gather(args):
    from dlnpipe.files import read_meta
    from dlnpipe.grid import Cell, stage_config
    from dlnpipe.stages import cube

    spec = json.loads(args.spec)
    exp = stage_config(spec, "cube")
    if len(args.train) != len(args.measure):
        raise SystemExit("gather: --train and --measure need one file per cell each, in the same order")
    cells, devices = [], []
    for t, m in zip(args.train, args.measure):
        meta = read_meta(t)
        cells.append((Cell(**meta["spec"]["cell"]), Path(t), Path(m)))
        devices.append(meta.get("device", "unknown"))
    data_paths = {read_meta(p)["data_id"]: Path(p) for p in args.data}
    cube.gather(spec["name"], exp, cells, data_paths, args.out, devices=devices)


def cmd_cube_root(args):
    from dlnpipe.stages import cube

    cfg = config_mod.validate(json.loads(args.config)) if args.config.lstrip().startswith("{") else \
        config_mod.load(args.config)
    cube.root(cfg, args.out)


def cmd_bounds(args):
    from dlnpipe.stages import compare_bounds

    claims = compare_bounds.run(args.cube, args.experiment, args.csv, args.md, args.constant)
    logging.getLogger("dlnpipe").info("claims for %s:\n%s", args.experiment, claims.to_string(index=False))


def cmd_plot(args):
    from dlnpipe.stages import plots

    plots.run(args.cube, args.experiment, args.figure, args.png, args.pdf)


def cmd_track_init(args):
    from dlnpipe.stages import track

    track.run_init(args.uri, args.experiments, args.out, artifacts=args.artifacts,
                   views=json.loads(args.views) if args.views else None)


def cmd_track(args):
    from dlnpipe.stages import track

    track.run(args.uri, args.name, json.loads(args.groups), args.data, args.train, args.measure,
              cube=str(Path(args.cube).resolve()), study=args.study, out=args.out)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dlnpipe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    from dlnpipe import __version__

    ap.add_argument("--version", action="version", version=f"dlnpipe {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    _study_commands(sub)
    _cell_commands(sub)
    _tracking_commands(sub)
    _experiment_commands(sub)
    return ap


def _study_commands(sub) -> None:
    p = sub.add_parser("validate", help="check a study config")
    p.add_argument("config")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("cells", help="list the cells (jobs) of a study")
    p.add_argument("config")
    p.set_defaults(func=cmd_cells)
    p = sub.add_parser("study", help="the study's name (its results are in results/<name>/)")
    p.add_argument("config")
    p.add_argument("--dir", action="store_true", help="print the study's directory instead")
    p.set_defaults(func=cmd_study)
    p = sub.add_parser("ui-links", help="print the MLflow UI's page of each experiment (what `make ui` prints)")
    p.add_argument("--uri", required=True, help="the tracking store, e.g. sqlite:///<abs>/results/mlflow.db")
    p.add_argument("--base", required=True, help="where the UI is served, e.g. http://127.0.0.1:5000")
    p.add_argument("--study", default="", help="only this study's experiments (default: every study)")
    p.add_argument("--prefix", default="dlnpipe/", help="the studies' MLflow experiment prefix")
    p.set_defaults(func=cmd_ui_links)
    p = sub.add_parser("new", help="write a study of one's own (config.yaml, Snakefile using this workflow, profiles)")
    p.add_argument("directory")
    p.add_argument("--name", help="the study's name (default: the directory's name)")
    p.set_defaults(func=cmd_new)
    p = sub.add_parser("ui", help="the MLflow UI on results/mlflow.db, after each experiment's links")
    p.add_argument("--uri", help="the tracking store (default: sqlite:///<here>/results/mlflow.db)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--study", default="", help="only this study's experiments (default: every study)")
    p.add_argument("--prefix", default="dlnpipe/", help="the studies' MLflow experiment prefix")
    p.set_defaults(func=cmd_ui)
    p = sub.add_parser("unlock", help="remove Snakemake's lock left by a killed run, if no Snakemake runs here")
    p.add_argument("directory", nargs="?", default=".")
    p.add_argument("--other-hosts", action="store_true",
                   help="also when a run recorded on another host holds it (that run is known to be gone)")
    p.set_defaults(func=cmd_unlock)
    p = sub.add_parser("schema", help="print (or write) the config's JSON schema")
    p.add_argument("--out")
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser("docs", help="write the generated reference pages (configuration.md, cube.md)")
    p.add_argument("--out", default="docs")
    p.add_argument("--config", default="config.yaml", help="the default study, for the examples column")
    p.set_defaults(func=cmd_docs)


def _cell_commands(sub) -> None:
    p = sub.add_parser("data", help="make one dataset")
    p.add_argument("--spec", required=True, help="JSON: {data: ..., kappa, spectrum, wstar, experiment, data_id}")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_data)
    for name, func, extra in (("train", cmd_train, ()), ("measure", cmd_measure, ("--train",))):
        p = sub.add_parser(name, help=f"{name} one cell")
        p.add_argument("--spec", help="JSON cell spec (what the rules pass)")
        p.add_argument("--config", help="a study config, with --experiment and --cell (by hand)")
        p.add_argument("--experiment")
        p.add_argument("--cell")
        p.add_argument("--data", nargs="+", required=True, help="the cell's dataset file(s)")
        for e in extra:
            p.add_argument(e, required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--device", default=None, help="override the config's device (auto, cpu, cuda)")
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        p.set_defaults(func=func)


def _tracking_commands(sub) -> None:
    p = sub.add_parser("track-init", help="create the MLflow store and experiments (once, before any logging)")
    p.add_argument("--uri", required=True)
    p.add_argument("--experiments", nargs="+", required=True, help="MLflow experiment names")
    p.add_argument("--artifacts", required=True, help="artifact root for a local (SQLite) store")
    p.add_argument("--views", help="JSON: experiment name -> its runs table's view (dlnpipe.tracking.table_view)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_track_init)
    p = sub.add_parser("track", help="log one experiment's training configurations to MLflow (relogging the cells "
                                     "whose results changed)")
    p.add_argument("--uri", required=True, help="tracking URI (relative sqlite paths are made absolute)")
    p.add_argument("--name", required=True, help="MLflow experiment name (created by track-init)")
    p.add_argument("--groups", required=True, help="JSON: each cell id without part index -> its parts' ids")
    p.add_argument("--data", nargs="+", required=True, help="the experiment's dataset files")
    p.add_argument("--train", nargs="+", required=True)
    p.add_argument("--measure", nargs="+", required=True)
    p.add_argument("--cube", required=True, help="where the cube is (a tag)")
    p.add_argument("--study", default="", help="the study's name (a tag)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_track)


def _experiment_commands(sub) -> None:
    p = sub.add_parser("gather", help="build one experiment's group of the cube from its cells' files")
    p.add_argument("--spec", required=True, help="JSON: {name, experiment: its config}")
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--train", nargs="+", required=True)
    p.add_argument("--measure", nargs="+", required=True)
    p.add_argument("--out", required=True, help="the group's directory, results/<study>/cube.zarr/<experiment>")
    p.set_defaults(func=cmd_gather)
    p = sub.add_parser("cube-root", help="write the cube's root (the study's attrs; stale groups removed)")
    p.add_argument("--config", required=True, help="the study config: a YAML file or a JSON string")
    p.add_argument("--out", required=True, help="the cube, results/<study>/cube.zarr")
    p.set_defaults(func=cmd_cube_root)
    p = sub.add_parser("bounds", help="compare one experiment with the theory")
    p.add_argument("--cube", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--md", required=True)
    p.add_argument("--constant", help="CSV of the empirical constant C(κ) (max S/S_min over depth and width)")
    p.set_defaults(func=cmd_bounds)
    p = sub.add_parser("plot", help="draw one figure of one experiment")
    p.add_argument("--cube", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--figure", required=True)
    p.add_argument("--png", required=True)
    p.add_argument("--pdf", required=True)
    p.set_defaults(func=cmd_plot)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    _setup(args)
    from dlnpipe.tracking import TrackingUnavailable

    try:
        args.func(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except TrackingUnavailable as err:
        print(f"tracking error: {err}", file=sys.stderr)
        return 3
    return 0
