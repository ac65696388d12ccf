"""JSON as ra prints it: every --json output, `ra runs export`, the JSON Lines curves.

NaN and infinity are not JSON: they become null. numpy scalars become plain
numbers; anything else JSON does not know (datetimes, paths) becomes its str().
"""

from __future__ import annotations

import json
import math
from typing import Any


def ready(obj: Any) -> Any:
    """`obj` with every non-finite float (nested in dicts, lists, tuples) as None."""
    if isinstance(obj, dict):
        return {k: ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [ready(v) for v in obj]
    if type(obj).__module__ == "numpy" and getattr(obj, "ndim", None) == 0:
        obj = obj.item()  # a numpy scalar
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(data: Any, *, indent: int | None = 2) -> str:
    """`data` as JSON text (indented by default; `indent=None`: one line)."""
    return json.dumps(ready(data), indent=indent, default=str, allow_nan=False)
