"""Imports only point down (DESIGN.md "Layers"): every import in fastchgnet/, lazy ones inside
functions and ``importlib``/``__import__`` calls included, goes to the module's own layer or a
lower one. A failure names the file, the line and both layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fastchgnet"

#: DESIGN.md's layers, lowest first; a module may import its own layer and those below.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("leaves", ("units", "errors", "files", "numerics", "signals")),
    ("data", ("data",)),
    ("model", ("model", "testing")),
    ("profiling", ("profiling",)),
    ("compile", ("compile",)),
    ("md", ("md",)),
    ("workflows", ("workflows",)),
    ("train", ("train",)),
    ("interfaces", ("compat", "cli", "predict_demo", "__init__", "__main__")),
]
RANK = {top: (rank, name) for rank, (name, tops) in enumerate(LAYERS) for top in tops}


def layer_of(module: str) -> tuple[int, str]:
    """(rank, name) of a ``fastchgnet.x.y`` module; the package itself is the top layer."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top not in RANK:
        raise KeyError(f"{module}: not in any layer of tests/test_layers.py (add it)")
    return RANK[top]


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, fastchgnet module) of every import in ``tree``, TYPE_CHECKING blocks aside."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {n.lineno for n in ast.walk(node) if hasattr(n, "lineno")}
    here = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base]
        elif isinstance(node, ast.Call) and node.args:
            callee = ast.unparse(node.func)
            first = node.args[0]
            dynamic = callee in ("importlib.import_module", "import_module", "__import__")
            if dynamic and isinstance(first, ast.Constant) and isinstance(first.value, str):
                names = [first.value]
        found += [(node.lineno, n) for n in names if n.split(".")[0] == "fastchgnet"]
    return found


def upward_imports(package: Path = PACKAGE) -> list[str]:
    """Every import from a lower layer to a higher one, as 'file:line: a (layer) -> b (layer)'."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        module = module_name(path, package)
        rank, name = layer_of(module)
        tree = ast.parse(path.read_text())
        for line, target in imported(tree, module, path.name == "__init__.py"):
            target_rank, target_name = layer_of(target)
            if target_rank > rank:
                where = path.relative_to(package.parent)
                problems.append(
                    f"{where}:{line}: {module} ({name}) imports {target} ({target_name})"
                )
    return problems


def test_imports_only_point_down() -> None:
    problems = upward_imports()
    assert not problems, "imports that point up:\n" + "\n".join(problems)


def test_an_upward_import_is_found_and_named(tmp_path: Path) -> None:
    package = tmp_path / "fastchgnet"
    (package / "data").mkdir(parents=True)
    (package / "data" / "__init__.py").write_text("")
    (package / "data" / "graph.py").write_text(
        "def build():\n    from fastchgnet.train.run import train  # lazy, still counted\n"
    )
    (package / "data" / "cache.py").write_text(
        "import importlib\nimportlib.import_module('fastchgnet.md.calculator')\n"
    )
    problems = upward_imports(package)
    assert any("data/graph.py:2: fastchgnet.data.graph (data) imports" in p for p in problems)
    assert any("data/cache.py:2" in p and "(md)" in p for p in problems)


def test_every_module_has_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))  # raises for a module no layer names


@pytest.mark.parametrize("module", ["fastchgnet.model.chgnet", "fastchgnet.cli.commands"])
def test_layers_are_ordered_as_design_md(module: str) -> None:
    assert layer_of("fastchgnet.data.graph")[0] < layer_of(module)[0]
