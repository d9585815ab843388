"""The documentation stands on its own: it builds with warnings as errors, its generated pages match the
code, every reference to it resolves, nothing refers to a file outside the repository, the examples run."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.image import imread
from workflow_utils import ROOT

from dlnpipe import reference

OUTSIDE = ("PAPER" + ".md", "DESIGN" + ".md", "../" + "shared")  # spelled in pieces: this file is tracked too


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / f for f in out.split() if (ROOT / f).is_file()]


def test_nothing_refers_to_a_file_outside_the_repository():
    hits = []
    for path in tracked_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hits += [f"{path.relative_to(ROOT)}: {name}" for name in OUTSIDE if name in text]
    assert not hits, hits


def test_generated_pages_are_in_sync():
    assert (ROOT / "docs/configuration.md").read_text() == reference.configuration_markdown(ROOT / "config.yaml"), \
        "run: python -m dlnpipe docs --out docs"
    assert (ROOT / "docs/cube.md").read_text() == reference.cube_markdown(), "run: python -m dlnpipe docs --out docs"


def test_configuration_page_lists_every_key_a_user_can_write():
    """Every model a study config can hold (walked from StudyConfig's field types, so a new nested one counts)
    has a section of docs/configuration.md whose table lists exactly its keys: optimizer options included."""
    import typing

    from pydantic import BaseModel

    from dlnpipe.config import Linspace, Logspace, StudyConfig

    def models(tp, seen):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp not in seen and tp not in (Linspace, Logspace):  # value forms, in the page's introduction
                seen.append(tp)
                for field in tp.model_fields.values():
                    models(field.annotation, seen)
        for arg in typing.get_args(tp):
            models(arg, seen)
        return seen

    page = (ROOT / "docs/configuration.md").read_text()
    tables = [set(re.findall(r"^\| `(\w+)` \|", part, re.M)) for part in page.split("\n## ")[1:]]
    found = models(StudyConfig, [])
    assert {m.__name__ for m in found} >= {"StudyConfig", "MlflowConfig", "ExperimentConfig", "DataConfig",
                                           "RunConfig", "OptimizerConfig"}
    for model in found:
        assert set(model.model_fields) in tables, f"{model.__name__}: no section lists {sorted(model.model_fields)}"


def anchors(page: Path) -> set[str]:
    """The heading ids MkDocs gives a page (its toc slugs: lowercase, punctuation dropped, spaces -> '-')."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", title)).strip("-"))
    return out


def test_references_to_the_docs_resolve():
    """Every `docs/<page>.md#<anchor>` in the code, configs and captions names a page and a heading that exist
    (and so do the `#<anchor>`s that follow it on the same line)."""
    bad = []
    for path in tracked_files():
        if path.suffix not in (".py", ".yaml", ".rst", ".smk", ".md") or "docs" in path.parts:
            continue
        for line in path.read_text().splitlines():
            for page, rest in re.findall(r"docs/(\w+)\.md((?:[#,\s]+(?:and\s+)?#[\w-]+)*(?:#[\w-]+)?)", line):
                target = ROOT / "docs" / f"{page}.md"
                if not target.exists():
                    bad.append(f"{path.name}: docs/{page}.md")
                    continue
                bad += [f"{path.name}: docs/{page}.md#{a}" for a in re.findall(r"#([\w-]+)", rest)
                        if a not in anchors(target)]
    assert not bad, bad


def test_docs_build_with_warnings_as_errors(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    for page in ("theory", "configuration", "cube", "study", "workflow", "library", "extending", "performance"):
        assert (tmp_path / "site" / page / "index.html").stat().st_size > 3000, page


@pytest.mark.slow
def test_examples_run(quick_run, tmp_path):
    png = tmp_path / "fig1b.png"
    cube = quick_run / "results/quick/cube.zarr"
    out = subprocess.run([sys.executable, str(ROOT / "examples/redraw_fig1b.py"), str(cube),
                          "--experiment", "small", "--out", str(png)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "converged networks" in out.stdout
    img = imread(png)
    assert img.shape[0] > 200 and img.std() > 0.01
    out = subprocess.run([sys.executable, str(ROOT / "examples/train_and_measure.py")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("s = ")]
    assert len(rows) == 8 and all("S/S_min" in r and "tr H/T_min" in r for r in rows)
