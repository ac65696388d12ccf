"""The output folder of `ra data prepare`, written so that it is complete or absent.

Everything is written into a temporary folder beside the output
(``.NAME.tmp-PID@HOST-XXXX``): the token files as ``train.bin.part`` / ``val.bin.part``
while they grow, then ``meta.json``, then the token files are renamed to ``train.bin`` /
``val.bin``, then the folder is renamed to the output. An interrupted prepare removes its
temporary folder; one killed outright leaves ``.part`` files, which `ra train` refuses, and
the next prepare of that output removes the folder once its process is gone (or a day after
it last changed).

An output that already holds a prepared dataset is replaced only with ``force``, in three
steps that never leave it without a dataset: the old one is renamed aside
(``.NAME.old-PID@HOST``), the new one renamed into place, then the old one deleted. A prepare
killed between the two renames leaves the old dataset aside: the next prepare of that output
puts it back first. A non-empty folder that is not a prepared dataset is never replaced, nor
is one that holds anything besides the files a prepare writes (``OWN_FILES``): the swap
replaces the whole folder, so such an output is refused before any work.
No torch here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from racli.dataprep.identity import SIDECAR, combine
from racli.dataprep.paths import listed
from racli.errors import BadInput

META = "meta.json"
TOKENIZER_FILE = "tokenizer.json"
FORMAT = "ra-data/1"
SPLITS = ("train", "val")
# the files of a prepared folder, which a replacement may delete: what a prepare writes, and
# the cache of figures about its token files that `ra train` keeps beside them
OWN_FILES = frozenset({"train.bin", "val.bin", META, TOKENIZER_FILE, SIDECAR})


def is_prepared(folder: Path) -> bool:
    return any((folder / name).exists() for name in (META, "train.bin", "val.bin", "meta.pkl"))


def foreign_entries(folder: Path) -> list[str]:
    """The names in ``folder`` that a prepare does not write (sorted): its other files and
    folders, which replacing ``folder`` would delete."""
    return sorted(p.name for p in folder.iterdir() if p.name not in OWN_FILES or p.is_dir())


def check_output(out: Path, force: bool) -> None:
    """BadInput unless ``out`` may be written (absent, an empty folder, or a prepared dataset
    with ``force`` that holds nothing else)."""
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise BadInput(f"--out {out}: exists and is not a folder")
        if any(out.iterdir()):
            if not is_prepared(out):
                raise BadInput(
                    f"--out {out}: a non-empty folder that is not a prepared "
                    f"dataset; choose a new folder"
                )
            others = foreign_entries(out)
            if others:
                raise BadInput(
                    f"--out {out}: holds {listed(others)}, which ra data prepare does not write "
                    f"and replacing the folder would delete; move them out or choose a new folder"
                )
            if not force:
                raise BadInput(
                    f"--out {out}: already holds a prepared dataset; add --force to replace it"
                )
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise BadInput(f"--out {out}: {parent} is not a folder")


def check_writable(out: Path) -> None:
    """BadInput unless the folder that will hold ``out`` can be made and written: a real
    write (a temporary folder made and removed there), not a permission check. Folders
    made for it are removed again."""
    parent = out.parent
    missing = []
    made = []
    try:
        existing = parent
        while not (existing.exists() or existing.is_symlink()) and existing != existing.parent:
            missing.append(existing)
            existing = existing.parent
        if not existing.is_dir():
            raise BadInput(f"--out {out}: {existing} is not a folder")
        for folder in reversed(missing):
            folder.mkdir()
            made.append(folder)
        probe = tempfile.mkdtemp(prefix=f"{_prefix(out, 'tmp')}{_owner()}-", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        raise BadInput(
            f"--out {out}: cannot be written ({exc.strerror or exc}); choose another folder"
        ) from None
    finally:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()


def output_paths(out: Path) -> Callable[[Path], bool]:
    """A test of whether a path lies in ``out`` or in one of its temporary or set-aside
    folders (symbolic links followed): what a prepare of ``out`` writes, never its input."""
    try:
        out = out.resolve()
    except (OSError, RuntimeError):  # a link loop: no path lies in it
        out = out.absolute()
    hidden = (_prefix(out, "tmp"), _prefix(out, "old"))

    def inside(path: Path) -> bool:
        try:
            rel = path.resolve().relative_to(out.parent)
        except (OSError, RuntimeError, ValueError):  # a link loop, or not under out's folder
            return False
        return bool(rel.parts) and (rel.parts[0] == out.name or rel.parts[0].startswith(hidden))

    return inside


class DatasetWriter:
    """Appends token arrays to the two splits, hashing as it goes; ``finish`` publishes."""

    def __init__(self, out: Path, dtype: np.dtype, force: bool = False):
        self.out = Path(out)
        self.force = force
        self.dtype = np.dtype(dtype)
        check_output(self.out, force)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(
            tempfile.mkdtemp(prefix=f"{_prefix(self.out, 'tmp')}{_owner()}-", dir=self.out.parent)
        )
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes it private; the output is not
        self._files = {s: open(self.tmp / f"{s}.bin.part", "wb") for s in SPLITS}
        self._hash = {s: hashlib.sha256() for s in SPLITS}
        self.tokens = dict.fromkeys(SPLITS, 0)
        self.documents = dict.fromkeys(SPLITS, 0)
        self.done = False

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.done:
            self.abort()

    def write_file(self, name: str, text: str) -> None:
        (self.tmp / name).write_text(text, encoding="utf-8")

    def add(self, split: str, tokens: np.ndarray, documents: int) -> None:
        if tokens.size:
            data = np.ascontiguousarray(tokens, dtype=self.dtype)
            view = memoryview(data).cast("B")
            self._files[split].write(view)
            self._hash[split].update(view)
            self.tokens[split] += int(data.shape[0])
        self.documents[split] += int(documents)

    def content_hash(self) -> str:
        size = self.dtype.itemsize
        return combine(
            {s: (self.dtype.name, self.tokens[s] * size, self._hash[s].hexdigest()) for s in SPLITS}
        )

    def finish(self, meta: dict) -> dict:
        """Close the files, write meta.json (with counts and content hash) and move the
        folder into place. Returns the meta written."""
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        meta = {
            "format": FORMAT,
            **meta,
            "dtype": self.dtype.name,
            "tokens": dict(self.tokens),
            "documents": dict(self.documents),
            "content_hash": self.content_hash(),
        }
        # meta.json before the token files get their names: a folder killed in between
        # still holds a .part file, which `ra train` refuses
        self.write_file(META, json.dumps(meta, indent=2) + "\n")
        for s in SPLITS:
            os.replace(self.tmp / f"{s}.bin.part", self.tmp / f"{s}.bin")
        self._publish()
        self.done = True
        return meta

    def _publish(self) -> None:
        """The temporary folder becomes the output; an old dataset there is renamed aside
        first and deleted only once the new one is in place."""
        out = self.out
        aside = None
        if out.exists() or out.is_symlink():
            check_output(out, self.force)  # nothing else appeared meanwhile
            if out.is_dir() and any(out.iterdir()):
                aside = out.parent / f"{_prefix(out, 'old')}{_owner()}"
                os.replace(out, aside)
            else:
                out.rmdir()
        try:
            os.replace(self.tmp, out)
        except BaseException:
            if aside is not None:
                os.replace(aside, out)  # the old dataset goes back
            raise
        _sync_folder(out.parent)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)

    def abort(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except OSError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.done = True


# ---------------------------------------------------------------------------- leftovers

STALE_AFTER_S = 24 * 3600.0  # a leftover of another machine's prepare: untouched this long


def _prefix(out: Path, kind: str) -> str:
    """The name prefix of `out`'s temporary (``tmp``) or set-aside (``old``) folders."""
    return f".{out.name}.{kind}-"


def _owner() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process, or not ours to ask: alive
        return True
    return True


def _last_change(folder: Path) -> float:
    times = [folder.stat().st_mtime]
    for p in folder.iterdir():
        try:
            times.append(p.stat().st_mtime)
        except OSError:
            continue
    return max(times)


def _abandoned(folder: Path, owner: str) -> bool:
    """Whether the prepare that made `folder` is gone: its process, when it ran on this
    machine (or named no machine, as older ra did), else a day without a change."""
    pid_text, _, host = owner.partition("@")
    if pid_text.isdigit() and (not host or host == socket.gethostname()):
        return not _pid_alive(int(pid_text))
    try:
        return time.time() - _last_change(folder) > STALE_AFTER_S
    except OSError:
        return False


def _leftovers(out: Path, kind: str) -> list[Path]:
    """`out`'s folders of `kind` whose prepare is gone, with their owner, newest first."""
    prefix = _prefix(out, kind)
    try:
        entries = [p for p in out.parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    except OSError:
        return []
    found = []
    for p in entries:
        rest = p.name[len(prefix) :]
        owner = rest.rsplit("-", 1)[0] if kind == "tmp" else rest
        if _abandoned(p, owner):
            found.append(p)
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return found


def tidy_leftovers(out: Path, note: Callable[[str], None]) -> None:
    """Before a prepare of `out`: put back an old dataset that a killed replacement left
    aside (when `out` is missing), and remove the temporary and set-aside folders of
    prepares of `out` that are gone, each with a note."""
    out = Path(out)
    for path in _leftovers(out, "old"):
        if not (out.exists() or out.is_symlink()) and is_prepared(path):
            os.replace(path, out)
            note(f"note: put back the dataset at {out}: a replacement of it was killed midway")
        else:
            shutil.rmtree(path, ignore_errors=True)
            note(f"note: removed {path}: the old copy of {out} from a finished replacement")
    for path in _leftovers(out, "tmp"):
        shutil.rmtree(path, ignore_errors=True)
        note(f"note: removed {path}: the unfinished output of a prepare that was killed")


def _sync_folder(folder: Path) -> None:
    """Make the renames in `folder` durable (where the system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
