"""Number formats shared by every table and report ("-" stands for a missing value)."""

from __future__ import annotations

import math
from typing import Any


def finite(x: Any) -> bool:
    """A number that is neither None, NaN nor infinite."""
    return x is not None and math.isfinite(float(x))


def number(x: Any, spec: str = ".3g") -> str:
    """``format(x, spec)``, or "-" when ``x`` is missing or not finite."""
    return format(x, spec) if finite(x) else "-"


def ms(x: float | None) -> str:
    """Milliseconds with 4 significant figures at most (0.1132, 12.35, 123.4)."""
    if not finite(x):
        return "-"
    if x >= 100:
        return f"{x:.1f}"
    if x >= 10:
        return f"{x:.2f}"
    return f"{x:.3f}"


def pct(x: float, digits: int = 2) -> str:
    """A fraction as a percentage: 0.0123 -> "1.23%"."""
    return f"{x * 100:.{digits}f}%"


def signed_pct(x: float | None, digits: int = 1) -> str:
    """A fraction as a signed percentage: 0.0123 -> "+1.2%"; "-" when missing."""
    if not finite(x):
        return "-"
    return f"{x * 100:+.{digits}f}%"


def share_pct(x: float) -> str:
    """A share with 2 significant digits below 10%: 0.0013 -> "0.13%", 0.25 -> "25%"."""
    if not math.isfinite(x):
        return str(x)
    p = 100 * x
    if p == 0:
        return "0%"
    if abs(p) >= 10:
        return f"{p:.0f}%"
    return f"{p:.2g}%"


def integer(x: float | None) -> str:
    """A count with thousands separators: 33258 -> "33,258"."""
    return f"{x:,.0f}" if finite(x) else "-"


def value(x: float | None) -> str:
    """A metric value: 4 decimals, or a whole number with separators from 1000 on."""
    if not finite(x):
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.4f}"


def raw(x: Any) -> str:
    """A value whole, for programs (TSV): an int as digits, a float as its shortest
    round-tripping repr (12345.0, 0.0016, 3.5000000000000004), "nan"/"inf" as Python
    writes them, a bool as true/false, a missing value as "-"; never a thousands separator."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return repr(x)
    return str(x)


def ids_text(ids: list[int], show: int = 10) -> str:
    """Run ids, the first ``show`` of them: "1, 2, 3" or "1, ..., 10, ... (5 more)"."""
    if len(ids) <= show:
        return ", ".join(map(str, ids))
    return ", ".join(map(str, ids[:show])) + f", ... ({len(ids) - show} more)"
