"""A study of one's own, outside this repository: where the installed workflow is, and ``dlnpipe new``.

The wheel carries the Snakemake workflow inside the package (``dlnpipe/_workflow/``: the Snakefile,
workflow/, profiles/, envs/ and the default config.yaml, copied there by setup.py); in a checkout
(an editable install) the same files are the repository's top level. :func:`new_study` writes a
directory that uses that workflow as a Snakemake module with a config of its own, so that
``snakemake --cores all`` there runs the study there, with the same profiles and the same outputs
(``results/<study>/``) as in this repository.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dlnpipe.studies import study_dir

_PACKAGE = Path(__file__).resolve().parent


def workflow_root() -> Path:
    """The directory holding the workflow's Snakefile: the installed copy, else the checkout's top level."""
    for root in (_PACKAGE / "_workflow", _PACKAGE.parent):
        if (root / "Snakefile").is_file() and (root / "workflow" / "rules" / "common.smk").is_file():
            return root
    raise FileNotFoundError(f"no dlnpipe workflow beside {_PACKAGE}: reinstall dlnpipe (pip install dlnpipe)")


def package_link(directory: str | Path) -> str:
    """A directory holding only a link to this dlnpipe package (``<directory>/dlnpipe-package/dlnpipe``), to
    put on PYTHONPATH: jobs in a conda environment (``--sdm conda``: envs/dlnpipe.yaml has every locked
    dependency but not dlnpipe) import this very package, and nothing else of this interpreter's."""
    base = (Path(directory) / "dlnpipe-package").resolve()
    link = base / "dlnpipe"
    if not (link.is_symlink() and link.resolve() == _PACKAGE):
        base.mkdir(parents=True, exist_ok=True)
        tmp = base / f".dlnpipe.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(_PACKAGE, target_is_directory=True)
        os.replace(tmp, link)  # atomic: two studies parsing at once both see a whole link
    return str(base)


def snakefile() -> str:
    """The workflow's Snakefile, for ``module dlnpipe: snakefile: ...``."""
    return str(workflow_root() / "Snakefile")


SNAKEFILE = '''\
# The study {name}: the dlnpipe workflow (the installed package's) as a Snakemake module, with this
# directory's config.yaml. Everything it produces lands in results/{name}/ here. README.md: the commands.
from dlnpipe.scaffold import snakefile


configfile: "config.yaml"


module dlnpipe:
    snakefile:
        snakefile()
    config:
        config


use rule * from dlnpipe
'''

CONFIG = '''\
# The study {name}. Every key is described in dlnpipe's documentation (docs/configuration.md), and
# `python -m dlnpipe schema` prints them all as a JSON schema. The config is validated before any job
# runs: a wrong key or value stops the run with one line naming it.

# The study's name: its results land in results/<study>/, its MLflow experiments are dlnpipe/<study>/<experiment>.
study: {name}

# Where training and Lanczos run: auto (CUDA when torch sees a GPU, else CPU), cpu or cuda.
device: auto

# One MLflow run per training configuration, in results/mlflow.db (every study of this directory logs there).
mlflow:
  enabled: true

experiments:
  # One experiment: the sharpness of small-init deep linear networks against the init scale, for two
  # learning rates (the paper's Fig 1b in miniature). Add experiments beside it; each becomes a group of
  # the cube results/{name}/cube.zarr, a table in results/{name}/bounds/ and its figures.
  sharpness:
    description: "small init, L = 4, m = d = 5: sharpness against the init scale"
    data: {{n: 50, d: 5, noise: 1.0, seed: 0}}   # kappa: 10 (with spectrum, wstar) prescribes the spectrum of Σ
    inits: [small]            # small: W_k entries N(0, s^2); also residual, gelu, relu
    depths: [4]               # trained layers L
    widths: [5]               # hidden width m
    scales: {{linspace: [0.2, 0.5, 4]}}    # init scale s
    runs:                     # learning rate: steps x seeds (networks per grid point)
      - {{lr: 0.02, steps: 3000, seeds: 4}}
      - {{lr: 0.05, steps: 1500, seeds: 4}}
    dtype: float64
    record_every: 50          # steps between trajectory samples
    figures: [fig1a, fig1b]   # distance to w* and sharpness against s
'''

README = '''\
# {name}: a dlnpipe study

```sh
snakemake --cores all                                      # run the study (results/{name}/)
snakemake --cores all -n                                   # what would run, without running it
snakemake --cores 1 --report results/{name}/report.html     # the HTML report: figures and tables
python -m dlnpipe ui                                       # the MLflow UI on results/mlflow.db (links printed)
snakemake --workflow-profile profiles/slurm                # on a SLURM cluster (edit profiles/slurm first)
```

`config.yaml` is the study; `profiles/default` is applied by Snakemake by itself (keep-going,
rerun-incomplete); `profiles/slurm` replaces it on a cluster. The cube opens with xarray alone:
`xr.open_datatree("results/{name}/cube.zarr", engine="zarr", consolidated=False)`.
'''


def new_study(directory: str | Path, *, name: str | None = None) -> list[Path]:
    """Write a study directory: Snakefile, config.yaml, README.md and the workflow's profiles. Returns the
    files written. Refuses a directory that already holds a Snakefile or a config.yaml."""
    directory = Path(directory)
    name = name or directory.resolve().name
    study_dir("results", name)  # a valid study name, and not one results/ itself uses
    taken = [p.name for p in (directory / "Snakefile", directory / "config.yaml") if p.exists()]
    if taken:
        raise ValueError(f"{directory} already holds {', '.join(taken)}: choose a new directory")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, template in (("Snakefile", SNAKEFILE), ("config.yaml", CONFIG), ("README.md", README)):
        path = directory / filename
        path.write_text(template.format(name=name))
        written.append(path)
    src = workflow_root() / "profiles"
    shutil.copytree(src, directory / "profiles", dirs_exist_ok=True)
    written += sorted(p for p in (directory / "profiles").rglob("*") if p.is_file())
    return written
