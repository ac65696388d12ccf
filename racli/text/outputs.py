"""Files the user names for ra to write: `--plot` (PNG, PDF or SVG by its suffix,
`check_plot_path`), `experiment --report`, `runs export --output`. One rule for all of them, checked before any work (`check_output_file`), and one
way of writing them: whole or not at all (`atomic_write`).

- The name must be a file's: not empty, not a folder, not a link to nothing, in a folder
  that exists, short enough for its file system. A device, pipe or socket is refused,
  except where the caller writes a stream (`special_ok`: a report to /dev/null or a pipe
  something reads); a pipe nothing reads is refused instead of waiting for a reader, and
  one that passed the check is kept open until the write, so its reader waits for the
  result instead of reading an end at the check.
- The folder is tried for writing with a probe file (created and removed), and an existing
  file is opened to append (nothing in it changes), so a read-only folder or file is
  refused before the work rather than when the result is written.
- It must not be one of the command's inputs (`check_not_input`: the results database, its
  side files, the config file), by name, by link or by hard link.
- A regular file is written into a temporary file beside it and renamed over it once
  complete: a failed write leaves the file there before as it was, and a hard link to the
  file (another name of the same data) is never written through.

No torch, no database.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from racli.errors import BadInput

TEMP_PREFIX = ".ra-"  # the temporary and probe files beside an output

# what `--plot FILE` may be: the suffix chooses the format
PLOT_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}


def folder_of(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def is_special(path: Path) -> bool:
    """Whether `path` exists and is not a regular file or a folder (a device, a pipe)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def check_output_file(
    path: str | Path, what: str, *, special_ok: bool = False, example: str | None = None
) -> Path:
    """`path` as a Path, or BadInput (one line) when `what` cannot be written there (rules in
    the module docstring). `example`: a file name suggested when `path` is a folder."""
    if not str(path).strip():
        raise BadInput(f"{what}: give a file name (got an empty one)")
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # bytes a shell passed that are not UTF-8
        shown = os.fsencode(str(path)).decode("utf-8", "backslashreplace")
        raise BadInput(f"cannot write {what} {shown}: the name is not valid UTF-8") from None
    path = Path(path)

    def refuse(why: str) -> BadInput:
        return BadInput(f"cannot write {what} {path}: {why}")

    parent = folder_of(path)
    try:
        if not parent.is_dir():
            if parent.exists():
                raise refuse(f"{parent} is not a folder")
            raise refuse(f"folder {parent} does not exist")
        _check_name_length(path, parent)
        if path.is_dir():
            hint = f" (give a file name, e.g. {path / example})" if example else ""
            raise refuse(f"it is a folder{hint}")
        if path.is_symlink() and not path.exists():
            raise refuse(f"it is a link to nothing ({os.readlink(path)})")
        if is_special(path):
            if not special_ok:
                raise refuse("it is not a regular file (a device, pipe or socket)")
            _try_special(path)
            return path
        if path.exists():
            with open(path, "a"):
                pass
        fd, probe = tempfile.mkstemp(dir=parent, prefix=TEMP_PREFIX, suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from exc
    return path


#: pipes the check opened, by (device, inode): their write ends stay open until the write,
#: so that a reader such as `cat fifo` is not ended by the check (it reads end-of-file at
#: the last writer's close) and receives what is written later
_HELD: dict[tuple[int, int], int] = {}


def _try_special(path: Path) -> None:
    """Open a device or pipe for writing without waiting: a pipe with no reader is refused.
    A pipe's write end is kept open for the write (`_HELD`)."""
    st = path.stat()
    key = (st.st_dev, st.st_ino)
    if key in _HELD:
        return
    fd = _open_special(path)
    if stat.S_ISFIFO(st.st_mode):
        _HELD[key] = fd
    else:
        os.close(fd)


def _take_held(path: Path) -> int | None:
    """The write end the check kept open for the pipe at `path`, if any (then no longer kept)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return _HELD.pop((st.st_dev, st.st_ino), None)


#: how long a write waits for a pipe's reader to (re)open it
PIPE_WAIT_S = 5.0


def _open_special(path: Path, wait_s: float = 0.0) -> int:
    """A device or pipe opened for writing, then blocking. A pipe with no reader is waited
    for `wait_s` (the up-front check's own open and close ends a reader such as `cat`
    at once, so the write waits for it to reopen), then OSError ENXIO "it is a pipe that
    nothing reads": never a wait for ever."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            if time.monotonic() >= deadline:
                raise OSError(exc.errno, "it is a pipe that nothing reads") from exc
            time.sleep(0.01)
    os.set_blocking(fd, True)
    return fd


def _check_name_length(path: Path, parent: Path) -> None:
    try:
        limit = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        return
    if len(os.fsencode(path.name)) > limit:
        raise OSError(errno.ENAMETOOLONG, f"the file name is longer than {limit} bytes")


def same_file(a: Path, b: Path) -> bool:
    """Whether two names reach one file (the same path, a link, or a hard link)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet): compare where the names lead
        return a.expanduser().resolve() == b.expanduser().resolve()


def check_not_input(
    path: Path | None,
    what: str,
    inputs: Iterable[tuple[Path, str]],
    folders: Iterable[tuple[Path, str]] = (),
) -> None:
    """BadInput when the output `path` is one of `inputs`, or lies inside one of `folders`
    ((path, what it is) pairs)."""
    if path is None:
        return
    for other, name in inputs:
        if same_file(Path(path), Path(other)):
            raise BadInput(
                f"{what} {path} is {name} ({other}): writing it would replace it; "
                "choose another file"
            )
    where = _where(Path(path))
    for folder, name in folders:
        if where.is_relative_to(_where(Path(folder))):
            raise BadInput(
                f"{what} {path} lies in {name} ({folder}): writing there could replace "
                "what ra reads; choose another place"
            )


def _where(path: Path) -> Path:
    """Where `path` leads: its folder resolved (links followed), then its name."""
    path = path.expanduser()
    return (path.parent.resolve() / path.name) if path.name else path.resolve()


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "w") -> Iterator[IO]:
    """`with atomic_write(path) as fh:` (`mode` "w" text, "wb" bytes): a regular file written
    into a temporary file beside it and renamed over `path` once complete; a device or
    pipe written as it is. A failure removes the temporary file, leaves the file there
    before unchanged, and is one line (BadInput)."""
    path = Path(path)
    if is_special(path):
        try:
            fd = _take_held(path)
            if fd is None:
                fd = _open_special(path, PIPE_WAIT_S)
            with os.fdopen(fd, mode.replace("w", "a")) as fh:
                yield fh
        except OSError as exc:  # no reader (any more), or it left mid-way (EPIPE)
            raise BadInput(f"cannot write {path}: {exc.strerror or exc}") from exc
        return
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder_of(path), prefix=TEMP_PREFIX, suffix=".tmp")
        kw = {} if "b" in mode else {"newline": "", "encoding": "utf-8"}
        with os.fdopen(fd, mode, **kw) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        kept = " (the file there before is unchanged)" if path.exists() else ""
        raise BadInput(f"cannot write {path}: {exc.strerror or exc}{kept}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_plot_path(plot: str | Path | None) -> Path | None:
    """BadInput unless a plot can be written at `plot`: a .png, .pdf or .svg file (the
    suffix is the format), by the rules of every output file."""
    if plot is None:
        return None
    plot = Path(plot)
    if str(plot).strip() and plot.suffix.lower() not in PLOT_FORMATS and not plot.is_dir():
        got = f"'{plot.suffix}'" if plot.suffix else "no suffix"
        raise BadInput(
            f"cannot write plot {plot}: the file name must end in "
            f"{', '.join(PLOT_FORMATS)} (the format), got {got}"
        )
    return check_output_file(plot, "plot")
