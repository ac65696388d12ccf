"""Text from outside ra made safe to print on a terminal.

Tags, error messages, config keys and values, run and data names, and the
environment fields of a store (which `ra db merge` may bring from anywhere)
are user strings: printed raw, an escape sequence in them (ESC[2J clears the
screen, OSC 8 makes a link, CR rewrites a line, BEL rings) acts on the
reader's terminal, and Rich reads ``[bold red]...[/]`` in them as markup.
Every such string goes through here before it reaches the console:

* :func:`visible` makes control characters visible as escapes (``\\x1b``,
  ``\\r``, ...): C0 controls, DEL, C1 controls and the Unicode bidirectional
  overrides, and a byte that was not UTF-8 (``\\xff``, where Python holds a lone
  surrogate). Newlines and tabs are kept; :func:`one_line` escapes them too.
* :func:`cut` shortens a field to a width with an ellipsis (table cells;
  ``--json`` keeps every field whole).
* :func:`cell` is a Rich ``Text`` (never parsed as markup or emoji codes);
  :func:`markup` escapes a string that goes into a markup string.

No torch, no database; rich is imported only by :func:`cell` and :func:`markup`.
"""

from __future__ import annotations

ELLIPSIS = "…"

# bidirectional overrides and isolates reorder what a reader sees
_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_NAMED = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}


def _escape(code: int) -> str:
    if code in _NAMED:
        return _NAMED[code]
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


_CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), *_BIDI]
# a byte that is not UTF-8 in an argument or a file name arrives as a lone surrogate
# (Python's surrogateescape): shown as the byte it stands for, as outputs.py shows a name
_UNDECODED = {code: f"\\x{code - 0xDC00:02x}" for code in range(0xDC80, 0xDD00)}
_ONE_LINE = {code: _escape(code) for code in _CONTROLS} | _UNDECODED
_BLOCK = {code: text for code, text in _ONE_LINE.items() if code not in (0x09, 0x0A)}


def visible(text: object) -> str:
    """``text`` with every control character but newline and tab made visible."""
    return str(text).translate(_BLOCK)


def one_line(text: object) -> str:
    """``text`` as one line: newlines and tabs are made visible too."""
    return str(text).translate(_ONE_LINE)


def cut(text: str, width: int) -> str:
    """``text`` shortened to ``width`` characters, the last one an ellipsis."""
    if width < 1:
        return ""
    return text if len(text) <= width else text[: width - 1] + ELLIPSIS


def field(text: object, width: int | None = None) -> str:
    """A table field: one visible line, cut to ``width`` when given."""
    s = one_line(text)
    return s if width is None else cut(s, width)


def cell(text: object, width: int | None = None, style: str = ""):
    """A Rich ``Text`` of :func:`field` (Rich does not read markup or emoji codes in it)."""
    from rich.text import Text

    return Text(field(text, width), style=style)


def markup(text: object) -> str:
    """``text`` made visible and escaped for a Rich markup string."""
    from rich.markup import escape

    return escape(visible(text))


_ASCII = {
    "✅": "[OK]",
    "❌": "[X]",
    "🎉": "***",
    "⚠️": "!!",
    "⚠": "!!",
    "❓": "[?]",
    "—": "-",
    "\u2013": "-",
    "±": "+/-",
    "Δ": "d",
    "…": "...",
    "·": ".",
    "●": "*",
    "≈": "~",
}


def to_ascii(text: str) -> str:
    """Replace the symbols this module uses by ASCII equivalents."""
    for k in sorted(_ASCII, key=len, reverse=True):
        text = text.replace(k, _ASCII[k])
    text = text.replace("\ufe0f", "")
    return text.encode("ascii", "replace").decode("ascii")


def for_stream(text: str, encoding: str | None) -> str:
    """``text`` unchanged when ``encoding`` can encode it, else :func:`to_ascii`."""
    try:
        text.encode(encoding or "ascii")
        return text
    except (UnicodeEncodeError, LookupError):
        return to_ascii(text)
