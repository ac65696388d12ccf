"""Tables: one column spec (`Column`), two forms.

`print_table` prints a listing (`ra runs`) for its reader: on a terminal a table is drawn by Rich at the terminal's width; when the
columns do not fit, trailing columns are left out whole (never cut
mid-value) and a note under the table names them. When stdout is not a
terminal (a pipe, a file, a CI log), or when asked (`--tsv`), the table is
printed as tab-separated values with every column, the header first, so
nothing depends on a width nobody chose (`column -t -s $'\\t'` aligns it;
`--json` has every field whole). That form is for programs: given the rows'
raw values, numbers are printed whole (:func:`racli.text.numbers.raw`: no
thousands separators, every digit of the stored float) instead of as the
terminal shows them.

Every cell goes through :mod:`racli.text.terminal`: control characters are made
visible, Rich markup in a cell stays text, and a cell longer than its
column's ``width`` is cut with an ellipsis, in both forms.

`TTY_COMPATIBLE=1` / `TTY_COMPATIBLE=0` (the variable Rich reads) forces
either form. `plain_table` is the fixed-width table inside a text report that
reads the same everywhere (RESULTS, the gate tables). No torch; rich is
imported only to draw the terminal form.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO, Union

from racli.text import terminal
from racli.text.numbers import raw

Cell = Union[str, tuple[str, str]]  # text, or (text, Rich style) on a terminal


@dataclass(frozen=True)
class Column:
    header: str
    justify: str = "left"  # left | right
    width: int | None = 32  # the most characters a cell shows; None: whole


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stdout) is a terminal; TTY_COMPATIBLE=1/0 overrides."""
    forced = os.environ.get("TTY_COMPATIBLE", "")
    if forced in ("0", "1"):
        return forced == "1"
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _text(c: Cell) -> str:
    return c[0] if isinstance(c, tuple) else c


def _style(c: Cell) -> str:
    return c[1] if isinstance(c, tuple) else ""


def _tsv_text(v: Any) -> str:
    """A TSV cell: text as it is, a number whole (numbers.raw), a missing value "-"."""
    if isinstance(v, (str, tuple)):
        return _text(v)
    return raw(v)


def tsv(columns: Sequence[Column], rows: Sequence[Sequence[Any]]) -> str:
    """Header and rows as tab-separated lines (each cell one visible line, cut to its width;
    numbers whole, see numbers.raw)."""
    lines = ["\t".join(terminal.field(c.header) for c in columns)]
    for row in rows:
        lines.append("\t".join(terminal.field(_tsv_text(v), c.width) for c, v in zip(columns, row)))
    return "\n".join(lines) + "\n"


def fit(
    columns: Sequence[Column], rows: Sequence[Sequence[Cell]], width: int, keep_min: int = 1
) -> int:
    """How many leading columns fit ``width`` characters (at least ``keep_min``)."""
    used, keep = 1, 0  # the left border
    for i, c in enumerate(columns):
        cells = [len(terminal.field(_text(r[i]), c.width)) for r in rows]
        w = max([len(c.header), *cells]) + 3  # padding and the border
        if used + w > width and keep >= keep_min:
            break
        used, keep = used + w, keep + 1
    return keep


def rich_table(
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    *,
    title: str = "",
    keep: int | None = None,
):
    """A Rich table of the first ``keep`` columns (all by default); cells are never markup."""
    from rich.table import Table

    keep = len(columns) if keep is None else keep
    table = Table(title=terminal.field(title) or None)
    for c in columns[:keep]:
        table.add_column(terminal.field(c.header), justify=c.justify, no_wrap=True)
    for row in rows:
        table.add_row(
            *[terminal.cell(_text(v), c.width, _style(v)) for c, v in zip(columns[:keep], row)]
        )
    return table


def left_out_note(columns: Sequence[Column], keep: int, width: int) -> str:
    names = ", ".join(c.header for c in columns[keep:])
    n = len(columns) - keep
    return (
        f"{n} column{'s' if n != 1 else ''} not shown to fit {width} columns: {names} "
        "(widen the terminal, or use --tsv, --json or a pipe for every column)"
    )


def print_table(
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    *,
    title: str = "",
    keep_min: int = 1,
    stream: TextIO | None = None,
    raw_rows: Sequence[Sequence[Any]] | None = None,
    force_tsv: bool = False,
) -> None:
    """Print the table on ``stream`` (default stdout): Rich on a terminal, TSV otherwise
    (or with ``force_tsv``). The TSV form prints ``raw_rows`` when given: the same cells
    with numbers as stored (int, float, None), so that a program reads them whole."""
    stream = sys.stdout if stream is None else stream
    if force_tsv or not is_terminal(stream):
        stream.write(tsv(columns, rows if raw_rows is None else raw_rows))
        stream.flush()
        return
    from rich.console import Console
    from rich.text import Text

    console = Console(file=stream, force_terminal=True)
    keep = fit(columns, rows, console.width, keep_min)
    console.print(rich_table(columns, rows, title=title, keep=keep))
    if keep < len(columns):
        console.print(Text(left_out_note(columns, keep, console.width), style="yellow"))


RULE = "=" * 70
THIN = "-" * 70


def plain_table(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a fixed-width table (header, dashes, rows) inside a text report that
    prints the same on a terminal and in a pipe (RESULTS, the gate tables): cells are
    shown whole, and the report is made visible as a whole when printed."""
    headers = [c.header for c in columns]
    align = ["<" if c.justify == "left" else ">" for c in columns]
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths, strict=False)
        ).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return out
