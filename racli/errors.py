"""Errors the CLI turns into exit codes.

`BadInput` (exit 2): the user asked for something that cannot be done as
asked (unknown attention, bad number, missing file, invalid ra.yaml, unknown
run id, CUDA asked for but absent, a database from a newer schema). Its
message is the one line printed on stderr.
`Interrupted` (exit 130): the user stopped the command (Ctrl-C, SIGTERM); its message
says what was kept and how to continue.
`Stopped` (exit 1): work that cannot go on for a reason outside it (a run
deleted or taken over by another process meanwhile, a store that stayed
unwritable past its limit); its message is the one line printed on stderr.
Anything else raised while working is a failure (exit 1).
"""

from __future__ import annotations


class BadInput(Exception):
    """Bad input from the user: one clear line, exit code 2."""


class Interrupted(Exception):
    """Stopped by the user: "ra: interrupted: <message>" on stderr, exit code 130."""


class Stopped(Exception):
    """Work stopped cleanly for a reason outside it: one clear line, exit code 1."""


def first_line(message: object, limit: int | None = None) -> str:
    """The first non-blank line of `message` (an exception's text), stripped; cut to
    `limit` characters with "..." when given. "" when there is none."""
    for line in str(message).splitlines():
        line = line.strip()
        if line:
            return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."
    return ""
