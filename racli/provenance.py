"""Provenance of ra itself: which ra code recorded a run.

    {"version": "0.1.0", "commit": "abc1234...", "dirty": True, "diff": "3f2a9c1d0b7e"}

`version` is the installed `ra` distribution's version (else
`racli.__version__`). When ra runs from a source checkout (the git
repository whose top level holds *this* `racli` package), `commit` is that
checkout's HEAD, `dirty` whether its tracked files have uncommitted changes,
and `diff` a short hash of `git diff HEAD` when dirty (two different edits
give two different hashes). Installed from a wheel, or copied into some other
repository, ra is not a checkout: `commit`, `dirty` and `diff` are None (a
copy nested inside another repository never reports that repository's commit).

The working directory's repository (what the user's experiment lives in) is a
separate thing: `racli.environment.git_commit`, the runs' `git_commit` column.

No torch, no database. Computed once per process (the code a process runs is
the code it imported when it started).
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from importlib import metadata
from pathlib import Path

import racli

DIST_NAME = "ra"
_GIT_TIMEOUT_S = 5


def package_dir() -> Path:
    """The directory of the `racli` package that is running."""
    return Path(racli.__file__).resolve().parent


def ra_version() -> str:
    try:
        return metadata.version(DIST_NAME)
    except metadata.PackageNotFoundError:
        return getattr(racli, "__version__", "unknown")


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=_GIT_TIMEOUT_S
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def source_checkout(pkg: Path | None = None) -> Path | None:
    """The top level of the git checkout ra runs from, or None.

    The repository found from the package's directory counts only when its top
    level holds this very package (`<top>/racli`): a copy of ra inside some
    other repository is not a checkout of ra."""
    pkg = (pkg or package_dir()).resolve()
    top = _git(pkg, "rev-parse", "--show-toplevel")
    if not top:
        return None
    root = Path(top.strip()).resolve()
    try:
        if (root / pkg.name).resolve() != pkg:
            return None
    except OSError:
        return None
    return root


def code_provenance(pkg: Path | None = None) -> dict:
    """{"version", "commit", "dirty", "diff"} of the ra code at `pkg` (default: the running one)."""
    info: dict = {"version": ra_version(), "commit": None, "dirty": None, "diff": None}
    root = source_checkout(pkg)
    if root is None:
        return info
    head = _git(root, "rev-parse", "HEAD")
    if not head:  # a repository without a commit yet
        return info
    info["commit"] = head.strip()
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    info["dirty"] = bool(status and status.strip()) if status is not None else None
    if info["dirty"]:
        diff = _git(root, "diff", "HEAD", "--no-color", "--no-ext-diff")
        if diff is not None:
            info["diff"] = hashlib.sha256(diff.encode()).hexdigest()[:12]
    return info


@functools.lru_cache(maxsize=1)
def current() -> dict:
    """The running ra's provenance (computed once per process)."""
    return code_provenance()


def describe(code: dict | None) -> str:
    """'0.1.0 (commit abc1234, dirty)' from a provenance dict ('unknown' for None)."""
    if not code:
        return "unknown"
    text = str(code.get("version") or "unknown")
    if code.get("commit"):
        extra = f"commit {str(code['commit'])[:7]}"
        if code.get("dirty"):
            extra += ", dirty" + (f" {code['diff']}" if code.get("diff") else "")
        text += f" ({extra})"
    return text


def version_line() -> str:
    """What `ra --version` prints, e.g. 'ra 0.1.0 (commit abc1234, dirty)'."""
    code = current()
    text = f"ra {code['version']}"
    if code.get("commit"):
        text += f" (commit {code['commit'][:7]}" + (", dirty" if code.get("dirty") else "") + ")"
    return text
