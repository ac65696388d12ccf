"""Run ids as the user types them: a store's ids are 64-bit integers.

`check_run_id` turns an id no store can hold (2^63 or more, below -2^63)
into bad input, before the database is asked (SQLite cannot even bind it).
"""

from __future__ import annotations

from racli.errors import BadInput

MAX_RUN_ID = 2**63 - 1


def check_run_id(run_id: int, option: str = "run id") -> int:
    """``run_id`` unchanged, or BadInput naming ``option`` when it cannot be a run id."""
    if not -MAX_RUN_ID - 1 <= run_id <= MAX_RUN_ID:
        raise BadInput(f"no run with id {run_id} ({option}): run ids are below 2^63")
    return run_id
