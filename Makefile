# The two commands of the README: `make run` (default study) and `make test` (test suite).
# Both create .venv when it is missing and install the locked environment first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CORES ?= all
PYTEST_ARGS ?=

.PHONY: install run quick report ui test lint bench docs package lock clean

$(STAMP): envs/requirements.lock pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r envs/requirements.lock 2> >(grep -v 'is ignored: it is neither' >&2)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2> >(grep -v 'is ignored: it is neither' >&2)
	@touch $@

install: $(STAMP)

# The rules call `python -m dlnpipe ...`: the venv's python comes first on PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)

# Every study lives in its own directory, results/<study>/ (its name: the config's `study:` key):
# the default study (config.yaml) in results/default/, `make quick` in results/quick/. Snakemake applies
# the workflow profile (profiles/default) by itself. A lock left by a run that was killed as a whole is
# removed first, only when no Snakemake process runs in this directory.
run: $(STAMP)
	$(PY) -m dlnpipe unlock
	snakemake --cores $(CORES)
	snakemake --cores 1 --report results/default/report.html

quick: $(STAMP)
	$(PY) -m dlnpipe unlock
	snakemake --cores $(CORES) --configfile workflow/configs/quick.yaml

# The HTML report of one study: `make report` (the default study), `make report CONFIG=<its config file>`.
CONFIG ?= config.yaml
report: $(STAMP)
	snakemake --cores 1 --configfile $(CONFIG) --report $$($(PY) -m dlnpipe study --dir $(CONFIG))/report.html

# The MLflow UI on the SQLite store every study logs into, on loopback: `make ui` lists every study's
# experiments, `make ui STUDY=quick` one study's.
UI_PORT ?= 5000
STUDY ?=
ui: $(STAMP)
	@$(PY) -m dlnpipe ui --port $(UI_PORT) --study "$(STUDY)"

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The documentation site (MkDocs, warnings are errors), into site/.
docs: $(STAMP)
	$(PY) -m mkdocs build --strict --quiet

# The package as a researcher gets it: the wheel installed with its declared dependencies into a fresh venv,
# then the library example and a `dlnpipe new` study run outside this checkout (about 3 min).
package:
	.ci/check-package

lint: $(STAMP)
	ruff check dlnpipe tests benchmarks examples
	snakefmt --check Snakefile workflow/rules
	$(PY) -m mypy

# Every benchmark, each printing its ratios measured side by side in one run.
bench: $(STAMP)
	$(PY) benchmarks/bench_fig1.py
	$(PY) benchmarks/bench_gelu.py
	$(PY) benchmarks/bench_hessian.py
	$(PY) benchmarks/bench_flow.py

# Re-resolve envs/requirements.txt into the lock file (needs the registries).
lock:
	rm -rf /tmp/dlnpipe-lock && python3 -m venv /tmp/dlnpipe-lock
	/tmp/dlnpipe-lock/bin/pip install -q -r envs/requirements.txt
	{ echo "# Resolved from envs/requirements.txt on Python 3.11 (make lock)."; \
	  /tmp/dlnpipe-lock/bin/pip freeze | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > envs/requirements.lock
	$(MAKE) envs/dlnpipe.yaml

# The conda environment of every rule (`snakemake --sdm conda`), written from the lock: Snakemake copies the
# file alone, so it lists every locked package itself (dlnpipe reaches its jobs through PYTHONPATH: common.smk).
envs/dlnpipe.yaml: envs/requirements.lock
	{ echo "# Conda environment of every rule (snakemake --sdm conda): the locked set of envs/requirements.lock,"; \
	  echo "# written from it by make (do not edit). dlnpipe itself reaches the jobs through PYTHONPATH."; \
	  echo "name: dlnpipe"; echo "channels:"; echo "  - conda-forge"; echo "dependencies:"; \
	  echo "  - python=3.11"; echo "  - pip"; echo "  - pip:"; \
	  grep -v '^#' envs/requirements.lock | sed 's/^/      - /'; } > $@

# Every study's results and Snakemake's state (one study: rm -rf results/<study>).
clean:
	rm -rf results .snakemake
