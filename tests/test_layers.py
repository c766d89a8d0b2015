"""The package layers of sweeper/ (sweeper/__init__.py): every import points down or sideways within a layer,
never up, and no module imports itself back through others (no cycles). `trainer` never imports `sweeper`."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYERS = ["sweeper.core", "sweeper.analysis", "sweeper.search", "sweeper.api", "sweeper.cli"]  # bottom to top


def modules(package: str) -> dict[str, pathlib.Path]:
    base = ROOT / package
    found = {}
    for path in base.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(path: pathlib.Path, known: set[str]) -> set[str]:
    """The known modules a file imports (at any depth of the file: lazy imports count too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n:
                out.add(n)
                break
    return out


def layer(module: str) -> int:
    for i, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return i
    return -1  # sweeper/__init__.py


SWEEPER = modules("sweeper")
GRAPH = {m: imports(p, set(SWEEPER)) - {m} for m, p in SWEEPER.items()}


def test_every_module_is_in_a_layer() -> None:
    assert [m for m in SWEEPER if layer(m) < 0 and m != "sweeper"] == []


@pytest.mark.parametrize("module", sorted(SWEEPER))
def test_no_upward_import(module: str) -> None:
    up = [t for t in GRAPH[module] if layer(t) > layer(module) and t != "sweeper"]
    if module == "sweeper":  # the package root re-exports the Python API (lazily) and imports nothing else
        up = [t for t in up if t != "sweeper.api"]
    assert up == [], f"{module} ({LAYERS[layer(module)]}) imports from a higher layer: {up}"


def test_no_import_cycle() -> None:
    # package __init__ files that only document are leaves; an edge to a package means its __init__
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for t in sorted(GRAPH.get(m, ())):
            if state.get(t) == 1:
                return path[path.index(t) :] + [t] if t in path else path + [t]
            if t not in state and (cycle := visit(t, path + [t])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state and (cycle := visit(m, [m])):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_trainer_never_imports_sweeper() -> None:
    offenders = [
        str(p.relative_to(ROOT)) for p in (ROOT / "trainer").rglob("*.py") if imports(p, set(SWEEPER) | {"sweeper"})
    ]
    assert offenders == []


def test_every_package_says_what_it_owns() -> None:
    for package in ["sweeper", *LAYERS]:
        init = ROOT / package.replace(".", "/") / "__init__.py"
        if init.exists():
            doc = ast.get_docstring(ast.parse(init.read_text()))
            assert doc and len(doc) > 80, f"{init} needs a docstring saying what the package owns"


def test_layout_docs_are_current() -> None:
    """README.md's and docs/ARCHITECTURE.md's layout blocks match the tree (`python scripts/layout.py --write`)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("layout", ROOT / "scripts" / "layout.py")
    assert spec is not None and spec.loader is not None
    layout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layout)
    stale = [p.name for p in layout.DOCS if layout.rewritten(p) != p.read_text()]
    assert stale == [], f"{stale}: the layout block is stale; run `python scripts/layout.py --write`"
