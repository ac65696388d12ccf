"""One line for a checkpoint that cannot be read.

torch's refusal of a file under ``torch.load(weights_only=True)`` is several
lines, most of them advice to load it with ``weights_only=False``, which would
run whatever the file holds. ra never does that: the user gets one line
saying why the file was refused, and nothing in it is loaded or run.
No torch here (it works on the message).
"""

from __future__ import annotations

from racli.errors import first_line

_REFUSED = "Weights only load failed"
_DETAIL = "WeightsUnpickler error:"
_ADVICE = ("Check the documentation of torch.load", "Please file an issue")


def describe_load_error(exc: BaseException) -> str:
    """A one-line reason for ``exc`` raised by ``torch.load`` (no torch advice)."""
    text = str(exc).strip()
    if _REFUSED not in text:
        first = first_line(text)
        return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    detail = text.split(_DETAIL, 1)[1] if _DETAIL in text else "\n".join(text.splitlines()[1:])
    lines = [ln.strip() for ln in detail.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(_ADVICE)]
    why = " ".join(lines).rstrip(".") or "content a weights-only load does not allow"
    return f"refused by the safe (weights-only) loader: {why}; nothing in it was loaded or run"
