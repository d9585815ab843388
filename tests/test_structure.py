"""The package's shape, checked: functions a reader holds in one screen, layers that point one way,
one home per architecture, and light modules that do not pay for torch."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dlnpipe import archs

PACKAGE = Path(__file__).resolve().parents[1] / "dlnpipe"
MODULES = sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


def imports(path: Path) -> set[str]:
    """dlnpipe modules imported anywhere in the file (inside functions too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dlnpipe"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}  # `from dlnpipe import archs`
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("dlnpipe")}
    known = {module_name(p) for p in MODULES}
    return {m for m in out if m in known} - {module_name(path), "dlnpipe"}


def test_no_function_longer_than_80_lines():
    long = [(node.end_lineno - node.lineno + 1, f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}")
            for path in MODULES for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80]
    assert not long, long


def test_no_import_cycle():
    graph = {module_name(p): imports(p) for p in MODULES}
    done, stack = set(), []

    def visit(u):
        if u in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(u):] + [u]))
        if u in done:
            return
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            visit(v)
        stack.pop()
        done.add(u)

    for u in graph:
        visit(u)


def test_layers_point_one_way():
    """Stage modules are thin siblings: they never import each other; the library never imports a stage."""
    for path in MODULES:
        name, deps = module_name(path), imports(path)
        stages = {d for d in deps if d.startswith("dlnpipe.stages.")}
        if name.startswith("dlnpipe.stages."):
            assert not stages, (name, stages)
        elif name not in ("dlnpipe.cli", "dlnpipe.__main__"):
            assert not stages, f"library module {name} imports stages {stages}"


def test_architecture_names_live_in_their_modules():
    """Nobody compares an architecture's name: outside dlnpipe/archs no module spells one as a string."""
    spelled = [(str(path.relative_to(PACKAGE.parent)), name) for path in MODULES if "archs" not in path.parts
               for name in archs.NAMES if f'"{name}"' in path.read_text() or f"'{name}'" in path.read_text()]
    assert not spelled, spelled


@pytest.mark.parametrize("modules", [
    ["dlnpipe.config", "dlnpipe.grid", "dlnpipe.archs", "dlnpipe.steppers"],  # what common.smk parses with
    ["dlnpipe.analysis", "dlnpipe.cube", "dlnpipe.stages.compare_bounds", "dlnpipe.stages.plots",
     "dlnpipe.figures.paper", "dlnpipe.figures.bounds"],  # the table and figure jobs
])
def test_light_modules_do_not_import_torch(modules):
    code = ("import json, sys; import " + ", ".join(modules) + "; "
            "m = sys.modules.get('torch'); "
            "print(json.dumps(m is None))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout), f"importing {modules} loads torch"
