"""The filters that read commands share: `--kind`, `--status`, `--tag` and `--since` (UTC)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from racli.errors import BadInput
from racli.names import check_utf8
from racli.store.recorder import END_STATES

KINDS = ("bench", "train", "calibration")
# the statuses a run shows: `crashed` is a `running` run whose heartbeat went stale
STATUSES = ("running", *END_STATES, "crashed")


def check_filter_text(**options: str | None) -> None:
    """BadInput for a filter given as an empty or blank string (`--tag ''`), which would
    otherwise read as no filter at all, or as text that is not valid UTF-8 (a shell passes
    such bytes as lone surrogates; the store holds UTF-8 alone, so no run could match and
    the query itself would fail). Keyword names are the options without dashes."""
    for name, value in options.items():
        if value is None:
            continue
        option = f"--{name.replace('_', '-')}"
        if not value.strip():
            raise BadInput(f"{option} is empty: give a value or leave the option out")
        check_utf8(value, option)


def check_kind_status(kind: str | None, status: str | None) -> None:
    """BadInput for an unknown `--kind` or `--status`."""
    check_filter_text(kind=kind, status=status)
    if kind and kind not in KINDS:
        raise BadInput(f"unknown kind '{kind}' (valid: {', '.join(KINDS)})")
    if status and status not in STATUSES:
        raise BadInput(f"unknown status '{status}' (valid: {', '.join(STATUSES)})")


def parse_since(text: str | None) -> datetime | None:
    """``YYYY-MM-DD`` or an ISO datetime -> naive UTC datetime (None stays None)."""
    if text is None:
        return None
    raw = text.strip()
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise BadInput(
            f"bad --since '{text}': expected a date YYYY-MM-DD or an ISO datetime "
            "such as 2025-06-01T14:30 (UTC)"
        ) from None
    if when.tzinfo is not None:
        try:
            when = when.astimezone(timezone.utc).replace(tzinfo=None)
        except OverflowError:  # year 1 or 9999 moved past the calendar's end
            raise BadInput(f"bad --since '{text}': outside the years 1-9999 in UTC") from None
    return when


def filters_text(tag: str | None, since: datetime | None) -> str:
    parts = []
    if tag is not None:
        parts.append(f"with tag '{tag}'")
    if since is not None:
        parts.append(f"started since {since.isoformat(sep=' ', timespec='minutes')}")
    return (" " + " and ".join(parts)) if parts else ""


def filters_dict(tag: str | None, since: datetime | None, any_env: bool) -> dict[str, Any]:
    """The history filters of a comparison, as JSON-ready data."""
    return {"tag": tag, "since": since.isoformat(sep=" ") if since else None, "any_env": any_env}
