# dlnpipe: the sharpness of deep linear networks (Marion & Chizat, NeurIPS 2024), reproduced.
# Table of contents. The stages and their files: workflow/rules/*.smk; the logic: the dlnpipe package.
from snakemake.utils import min_version

min_version("9.0")


# The study: a --configfile that defines experiments is the whole study; otherwise config.yaml,
# adjusted by the files and --config values given (Snakemake applies them over every config file it reads).
if "experiments" not in config:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/cube.smk"
include: "workflow/rules/bounds.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/track.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        all_targets(),
