"""One line for a checkpoint that cannot be read.

torch's refusal of a file under ``torch.load(weights_only=True)`` is several
lines, most of them advice to load it with ``weights_only=False``, which would
run whatever the file holds. ra never does that: the user gets one line
saying why the file was refused, and nothing in it is loaded or run.
A file that is empty or cut short, damaged, or not a PyTorch file at all is
named as such rather than by the unpickler's error (``EOFError``, ``KeyError: 101``).
No torch here (it works on the message).
"""

from __future__ import annotations

import pickle

from racli.errors import first_line

_REFUSED = "Weights only load failed"
_DETAIL = "WeightsUnpickler error:"
_ADVICE = ("Check the documentation of torch.load", "Please file an issue")
_DAMAGED = "PytorchStreamReader failed"  # a zip archive that cannot be read


def describe_load_error(exc: BaseException) -> str:
    """A one-line reason for ``exc`` raised by ``torch.load`` (no torch advice)."""
    text = str(exc).strip()
    if _REFUSED not in text:
        return _unreadable(exc, text)
    detail = text.split(_DETAIL, 1)[1] if _DETAIL in text else "\n".join(text.splitlines()[1:])
    lines = [ln.strip() for ln in detail.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(_ADVICE)]
    why = " ".join(lines).rstrip(".") or "content a weights-only load does not allow"
    return f"refused by the safe (weights-only) loader: {why}; nothing in it was loaded or run"


def _unreadable(exc: BaseException, text: str) -> str:
    """A one-line reason for a file torch could not read (not a refusal)."""
    first = first_line(text)
    error = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if isinstance(exc, EOFError):
        return "the file is empty or cut short: not a whole checkpoint"
    if _DAMAGED in text:
        return f"the file is damaged or incomplete ({first.split('. ')[0].rstrip('.')})"
    if isinstance(exc, (KeyError, pickle.UnpicklingError)):
        return f"not a PyTorch checkpoint file ({error})"
    return error
