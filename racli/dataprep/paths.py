"""Paths the user names for the data, checkpoints and weights of `ra train --data`,
`ra sample --checkpoint / --weights`, `ra runs export-weights --out` and `ra data
prepare SOURCE / --out`, checked where each is first used.

`user_path` expands `~` and refuses, in one line (BadInput), a name no file can have:
empty or blank, `~user` of a user with no home folder, a name longer than its file
system allows. `is_special` tells a device, pipe or socket from a file or folder: such
a path is refused before anything reads it (reading a pipe waits for a writer).
No torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from racli.errors import BadInput
from racli.text.outputs import is_special

__all__ = ["NOT_REGULAR", "is_special", "listed", "user_path"]

NOT_REGULAR = "is not a regular file (a device, pipe or socket)"
NAME_MAX = 255  # the usual limits, where the file system does not say
PATH_MAX = 4096


def user_path(text: str | os.PathLike, what: str | None = None) -> Path:
    """`text` as a Path with `~` and `~user` expanded. BadInput when it is empty or blank,
    names a user with no home folder, or is too long for its file system (a name over
    NAME_MAX bytes, the whole over PATH_MAX). The message starts with `what` (an option
    or argument, e.g. "--out") and the path, or with the path alone when `what` is None."""
    raw = os.fspath(text)
    shown = f"{what} {raw}" if what else str(raw)
    if not str(raw).strip():
        raise BadInput(f"{what or 'the path'} is empty: give a path")
    try:
        path = Path(raw).expanduser()
    except RuntimeError:
        user = str(raw).split(os.sep, 1)[0]
        raise BadInput(f"{shown}: {user} names no user with a home folder") from None
    _check_length(path, shown)
    return path


def _check_length(path: Path, shown: str) -> None:
    """BadInput when a name in `path`, or the whole of it, is longer than the file system
    of the nearest folder on its way that exists allows."""
    name_max, path_max = _limits(path)
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > name_max:
            raise BadInput(
                f"{shown}: a name in it is {size} bytes long, more than the file system "
                f"allows ({name_max})"
            )
    size = len(os.fsencode(str(path.absolute())))
    if size >= path_max:
        raise BadInput(
            f"{shown}: the path is {size} bytes long, more than the file system allows "
            f"({path_max - 1})"
        )


def _limits(path: Path) -> tuple[int, int]:
    """(longest name, longest path + 1) in bytes where `path` would be."""
    folder = path.absolute()
    while not os.path.isdir(folder) and folder != folder.parent:
        folder = folder.parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):
        return NAME_MAX, PATH_MAX


def listed(names: list[str], most: int = 3) -> str:
    """The first `most` names quoted, and how many more: "'a', 'b', 'c' and 2 more"."""
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(repr(name) for name in names[:most]) + more
