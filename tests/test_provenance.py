"""racli.provenance: ra's version and source checkout, recorded with every run; `ra --version`."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from helpers import ENV_INFO, REPO, TRAIN_CONFIG, ra_inprocess, record_run, run_python

from racli import provenance
from racli.store.engine import open_store
from racli.store.recorder import RunRecorder, config_hash

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(cwd, *args) -> str:
    out = subprocess.run(
        [
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "commit.gpgsign=false",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def make_repo(path, files: dict[str, str]) -> str:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "init", "-q")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "init")
    return git(path, "rev-parse", "HEAD")


@pytest.fixture(autouse=True)
def fresh_cache():
    provenance.current.cache_clear()
    yield
    provenance.current.cache_clear()


def test_checkout_commit_dirty_and_diff(tmp_path):
    head = make_repo(tmp_path / "ra", {"racli/__init__.py": "", "racli/attn.py": "x = 1\n"})
    pkg = tmp_path / "ra" / "racli"
    assert provenance.source_checkout(pkg) == (tmp_path / "ra").resolve()
    clean = provenance.code_provenance(pkg)
    assert clean == {
        "version": provenance.ra_version(),
        "commit": head,
        "dirty": False,
        "diff": None,
    }
    (pkg / "attn.py").write_text("x = 2\n")
    one = provenance.code_provenance(pkg)
    assert (one["commit"], one["dirty"]) == (head, True) and len(one["diff"]) == 12
    (pkg / "attn.py").write_text("x = 3\n")
    two = provenance.code_provenance(pkg)
    assert two["dirty"] and two["diff"] != one["diff"]  # two different edits never look alike
    (pkg / "attn.py").write_text("x = 2\n")
    assert provenance.code_provenance(pkg) == one


def test_a_copy_nested_in_another_repository_reports_no_commit(tmp_path):
    outer = tmp_path / "outer"
    # the outer repository even has a racli/ of its own at its top
    make_repo(
        outer,
        {"README": "other project\n", "racli/__init__.py": "", "vendor/ra/racli/__init__.py": ""},
    )
    copy = outer / "vendor" / "ra" / "racli"
    assert provenance.source_checkout(copy) is None
    assert provenance.code_provenance(copy)["commit"] is None
    # untracked copy too
    shutil.copytree(copy, outer / "lib" / "racli")
    assert provenance.code_provenance(outer / "lib" / "racli")["commit"] is None


def test_not_a_checkout(tmp_path):
    pkg = tmp_path / "site-packages" / "racli"
    pkg.mkdir(parents=True)
    assert provenance.code_provenance(pkg) == {
        "version": provenance.ra_version(),
        "commit": None,
        "dirty": None,
        "diff": None,
    }


def test_recorded_commit_of_a_checkout_nested_in_another_repository_is_ras_own(
    tmp_path, monkeypatch
):
    outer_head = make_repo(tmp_path / "work", {"experiment.py": "print(1)\n"})
    inner = tmp_path / "work" / "tools" / "ra"  # ra's own checkout inside the user's repository
    inner_head = make_repo(inner, {"racli/__init__.py": "", "pyproject.toml": "[project]\n"})
    monkeypatch.setattr(provenance, "package_dir", lambda: (inner / "racli").resolve())
    monkeypatch.chdir(tmp_path / "work")
    store = open_store(str(tmp_path / "ra.db"))
    rec = RunRecorder.start(
        store,
        kind="train",
        attn="ra_v5",
        config=dict(TRAIN_CONFIG),
        env_info=ENV_INFO,
        heartbeat=False,
    )
    rec.finish()
    from racli.store.queries import get_run

    run = get_run(store, rec.run_id)
    store.close()
    assert run.config["code"]["commit"] == inner_head != outer_head
    assert run.config["code"]["dirty"] is False
    # the working directory's repository is kept apart, in git_commit
    assert run.git_commit == outer_head


def test_runs_from_different_code_never_pool(tmp_path, monkeypatch):
    store = open_store(str(tmp_path / "ra.db"))
    a = record_run(store)
    monkeypatch.setattr(
        provenance,
        "current",
        lambda: {"version": "0.1.0", "commit": "f" * 40, "dirty": False, "diff": None},
    )
    b = record_run(store)
    from racli.store.queries import get_run

    ra, rb = get_run(store, a), get_run(store, b)
    store.close()
    assert ra.config_hash == config_hash(ra.config) != rb.config_hash
    assert {k: v for k, v in ra.config.items() if k != "code"} == TRAIN_CONFIG
    assert rb.config["code"]["commit"] == "f" * 40


def test_describe_and_version_line(monkeypatch):
    assert provenance.describe(None) == "unknown"
    assert provenance.describe({"version": "0.1.0", "commit": None}) == "0.1.0"
    code = {"version": "0.1.0", "commit": "abc1234def", "dirty": True, "diff": "0123456789ab"}
    assert provenance.describe(code) == "0.1.0 (commit abc1234, dirty 0123456789ab)"
    monkeypatch.setattr(provenance, "current", lambda: code)
    assert provenance.version_line() == "ra 0.1.0 (commit abc1234, dirty)"
    monkeypatch.setattr(provenance, "current", lambda: {**code, "dirty": False})
    assert provenance.version_line() == "ra 0.1.0 (commit abc1234)"
    monkeypatch.setattr(provenance, "current", lambda: {**code, "commit": None})
    assert provenance.version_line() == "ra 0.1.0"


def test_ra_version_option():
    res = ra_inprocess("--version")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == provenance.version_line()
    assert res.stdout.startswith(f"ra {provenance.ra_version()}")


def test_version_option_imports_no_torch():
    code = (
        "import sys\nsys.argv = ['ra', '--version']\nfrom racli import cli\n"
        "try:\n    cli.main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "assert 'torch' not in sys.modules\nimport racli.provenance\n"
    )
    res = run_python(code, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ra ")
