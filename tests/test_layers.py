"""The code's shape: pyproject's import-linter contracts hold (the layers, and no module
importing, directly or through others, a module that imports it back), the contract
against cycles finds one, and racli holds the planned modules."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import in_ci

try:
    import importlinter  # noqa: F401
except ImportError:  # import-linter is of the test extra
    if in_ci():
        raise
    pytest.skip("import-linter (ra[test]) is not installed", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold(monkeypatch):
    from importlinter.cli import lint_imports

    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def _contract(name: str) -> dict:
    from importlinter.api import read_configuration

    contracts = read_configuration(str(ROOT / "pyproject.toml"))["contracts_options"]
    (contract,) = [c for c in contracts if c["name"] == name]
    return contract


def test_the_cycle_contract_finds_a_cycle_between_modules(tmp_path, monkeypatch):
    """pyproject's "no import cycles" contract fails over a package whose modules import
    one another in a loop (inner.a -> b -> c -> inner.a) and holds once the loop is cut."""
    from importlinter.cli import lint_imports

    pkg = tmp_path / "loop"
    (pkg / "inner").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "inner" / "__init__.py").write_text("")
    (pkg / "inner" / "a.py").write_text("from loop import b\n")
    (pkg / "b.py").write_text("from loop import c\n")
    (pkg / "c.py").write_text("from loop.inner import a\n")
    contract = dict(_contract("no import cycles"), ancestors=["loop"])
    lines = ["[importlinter]", "root_packages =", "    loop", "", "[importlinter:contract:1]"]
    for key, value in contract.items():
        lines += (
            [f"{key} =", *(f"    {v}" for v in value)]
            if isinstance(value, list)
            else [f"{key} = {value}"]
        )
    config = tmp_path / ".importlinter"
    config.write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert lint_imports(config_filename=str(config), no_cache=True) == 1
    (pkg / "c.py").write_text("")
    assert lint_imports(config_filename=str(config), no_cache=True) == 0


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
