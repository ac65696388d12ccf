"""Where a store's checkpoints live (torch-free: `ra runs delete` uses it too).

See racli/training/checkpoint.py for the layout and what a checkpoint holds.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from racli.errors import BadInput
from racli.store.urls import database_url, sqlite_path

DIRNAME = "ra_checkpoints"


def store_key(db: str) -> str:
    """The name of a store's checkpoint folder: the SQLite file's name, or for any other
    URL `<dialect>-<short hash of the URL without its password>`."""
    path = sqlite_path(db)
    if path is not None:
        return path.name
    url = database_url(db)
    try:
        u = make_url(url)
        dialect = u.get_backend_name()
        safe = URL.create(
            u.drivername,
            username=u.username,
            host=u.host,
            port=u.port,
            database=u.database,
            query=u.query,
        ).render_as_string()
    except Exception:  # not a URL SQLAlchemy reads: the store would not open either
        dialect, safe = "db", url
    digest = hashlib.sha256(safe.encode()).hexdigest()[:12]
    return f"{dialect}-{digest}"


def checkpoint_dir(db: str) -> Path:
    """The checkpoint folder of the store at database location `db`."""
    path = sqlite_path(db)
    base = path.parent if path is not None else Path.cwd()
    return base / DIRNAME / store_key(db)


def checkpoint_path(db: str, run_id: int) -> Path:
    return checkpoint_dir(db) / f"run_{run_id}.pt"


def legacy_hint(db: str, run_id: int) -> str:
    """A note for a run whose checkpoint sits where ra once wrote every store's (shared by all
    stores of one folder), or "" when there is none."""
    path = sqlite_path(db)
    old = (path.parent if path is not None else Path.cwd()) / DIRNAME / f"run_{run_id}.pt"
    if not old.is_file():
        return ""
    return (
        f" (a checkpoint at {old} may be this run's, or another store's in this folder: "
        f"if it is this run's, move it to {checkpoint_path(db, run_id)})"
    )


def ensure_writable(db: str) -> Path:
    """Create the store's checkpoint folder and write and remove a probe file in it.
    BadInput (nothing touched in the store) when that is impossible."""
    folder = checkpoint_dir(db)
    probe = folder / f".probe-{os.getpid()}"
    try:
        _make_folder(folder)
        with open(probe, "wb") as fh:
            fh.write(b"ra")
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink()
        reason = exc.strerror or str(exc)
        raise BadInput(f"cannot write checkpoints to {folder}: {reason}") from exc
    return folder


def missing_folders(db: str) -> list[Path]:
    """The folders `ensure_writable(db)` would create (deepest first), to remove them again
    with `remove_folders` when what follows fails."""
    out = []
    for p in (checkpoint_dir(db), *checkpoint_dir(db).parents):
        if p.exists():
            break
        out.append(p)
    return out


def remove_folders(folders: list[Path]) -> None:
    """Remove these folders, deepest first, where they are empty."""
    for p in folders:
        with contextlib.suppress(OSError):
            p.rmdir()


def _make_folder(folder: Path) -> None:
    """mkdir -p, with a plain reason when a file stands where a folder goes."""
    for p in (folder, *folder.parents):
        if p.exists():
            if not p.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"{p} is a file, not a folder")
            break
    folder.mkdir(parents=True, exist_ok=True)
