"""Long id lists cut into chunks, one IN (...) clause each."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

IN_CHUNK = 900  # bound parameters per IN (...) clause (SQLite's limit is larger)


def in_chunks(ids: Sequence[int], size: int = IN_CHUNK) -> Iterator[list[int]]:
    ids = list(ids)
    for k in range(0, len(ids), size):
        yield ids[k : k + size]
