"""Build hook only (the metadata is in pyproject.toml): the wheel carries the Snakemake workflow (this
repository's Snakefile, workflow/, profiles/, envs/ and the default config.yaml) inside the package, as
dlnpipe/_workflow/, so that an installed dlnpipe can run a study of one's own (`dlnpipe new`). In a checkout
(editable install) dlnpipe.workflow finds the same files at the repository's top level."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

WORKFLOW = ["Snakefile", "config.yaml", "workflow", "profiles", "envs"]


class BuildWithWorkflow(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # the checkout itself is the workflow
            return
        target = Path(self.build_lib) / "dlnpipe" / "_workflow"
        shutil.rmtree(target, ignore_errors=True)
        for name in WORKFLOW:
            src = Path(name)
            if src.is_dir():
                shutil.copytree(src, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target / name)


setup(cmdclass={"build_py": BuildWithWorkflow})
