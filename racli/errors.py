"""Errors the CLI turns into exit codes.

`BadInput` (exit 2): the user asked for something that cannot be done as
asked (unknown attention, bad number, missing file, invalid ra.yaml, unknown
run id, CUDA asked for but absent, a database from a newer schema). Its
message is the one line printed on stderr.
Anything else raised while working is a failure (exit 1).
"""

from __future__ import annotations


class BadInput(Exception):
    """Bad input from the user: one clear line, exit code 2."""
