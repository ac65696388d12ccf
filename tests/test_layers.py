"""The code's shape: the layers of pyproject's import-linter contracts hold, and no
module imports, directly or through others, a module that imports it back."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import in_ci

try:
    import grimp
except ImportError:  # import-linter, of the test extra, brings grimp
    if in_ci():
        raise
    pytest.skip("import-linter (ra[test]) is not installed", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold(monkeypatch):
    from importlinter.cli import lint_imports

    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def _cycles(graph, modules) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in modules:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                found.append(sorted(scc))

    for m in sorted(modules):
        if m not in index:
            visit(m)
    return found


@pytest.mark.parametrize("package", ["racli", "racli_models"])
def test_no_import_cycles(package):
    graph = grimp.build_graph(package, cache_dir=None, exclude_type_checking_imports=True)
    # a package's __init__ is where Python starts importing its modules: leave the
    # package nodes out so that `from racli.x import y` is not read as a cycle with racli.x
    modules = {m for m in graph.modules if not _is_package(m)}
    assert _cycles(graph, modules) == []


def _is_package(module: str) -> bool:
    return (ROOT.joinpath(*module.split(".")) / "__init__.py").is_file()


# the house by feature: the foundations, the CLI, and one package per layer or feature
TOP_MODULES = {"__init__", "__main__", "cli", "errors", "environment", "provenance", "names"}
TOP_PACKAGES = {
    *("config", "commands", "store", "text"),
    *("bench", "compare", "gates", "experiment", "training", "dataprep"),
}


def test_racli_holds_only_the_planned_modules():
    racli = ROOT / "racli"
    modules = {p.stem for p in racli.glob("*.py")}
    packages = {p.name for p in racli.iterdir() if (p / "__init__.py").is_file()}
    assert modules == TOP_MODULES
    assert packages == TOP_PACKAGES
    # racli/data holds the packaged corpus, no code
    assert not list((racli / "data").rglob("*.py"))
