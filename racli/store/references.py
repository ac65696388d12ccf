"""Runs that name other runs: the references in a run's config, and who depends on whom.

A run's config may name another run of its store (`REFERENCES`):

- `budget_source.calibration_run`: the calibration run of `ra experiment` that the run's
  step budget came from;
- `resumed_from.run`: a run whose checkpoint the run started from.

Each reference is kept as the id (what a user reads) and the uuid beside it
(`budget_source.calibration_uuid`, `resumed_from.uuid`): an id means something only in
one store, a uuid in every copy. `RunRecorder.start` fills the uuid in; `ra db merge`
rewrites the id to the target's; runs recorded before the uuid was kept are read by id.
No torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select

from racli.store.chunks import in_chunks
from racli.store.models import Run


@dataclass(frozen=True)
class Reference:
    entry: str  # the config entry (a dict)
    id_key: str  # the referenced run's id in this store
    uuid_key: str  # its uuid
    what: str  # how a message names the relation: "<dependant> <what> <run>"


REFERENCES = (
    Reference("budget_source", "calibration_run", "calibration_uuid", "took its budget from"),
    Reference("resumed_from", "run", "uuid", "resumed from"),
)


def named(config: Any) -> list[tuple[Reference, int | None, str | None]]:
    """The references `config` holds: (reference, id, uuid), either of which may be None."""
    out = []
    if not isinstance(config, dict):
        return out
    for ref in REFERENCES:
        entry = config.get(ref.entry)
        if not isinstance(entry, dict):
            continue
        rid, uid = entry.get(ref.id_key), entry.get(ref.uuid_key)
        if rid is None and uid is None:
            continue
        out.append((ref, _as_int(rid), uid if isinstance(uid, str) else None))
    return out


def _as_int(value) -> int | None:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


def with_uuids(conn, config: dict) -> dict:
    """`config` with the uuid of every run it names by id only (looked up in this store)."""
    out = config
    for ref, rid, uid in named(config):
        if uid is not None or rid is None:
            continue
        found = conn.execute(select(Run.uuid).where(Run.id == rid)).scalar()
        if found is not None:
            out = {**out, ref.entry: {**out[ref.entry], ref.uuid_key: found}}
    return out


def remapped(config: Any, uuid_of_source_id: dict[int, str], target_id_of: dict[str, int]):
    """A merged run's config with its references pointing into the target store: the uuid
    kept (or, from a source that did not record it, derived from the source's id), the id
    replaced by the target's id of that uuid (None when the target lacks the run)."""
    out = config
    for ref, rid, uid in named(config):
        uid = uid or (uuid_of_source_id.get(rid) if rid is not None else None)
        if uid is None:
            continue
        entry = {**out[ref.entry], ref.uuid_key: uid, ref.id_key: target_id_of.get(uid)}
        out = {**out, ref.entry: entry}
    return out


def _referring(ref: Reference, ids: list[int], uuids: list[str]):
    """WHERE: the run's config names one of these runs (by uuid, or by id where no uuid
    was recorded)."""
    col = Run.config[ref.entry]
    by_uuid = col[ref.uuid_key].as_string().in_(uuids)
    by_id = and_(col[ref.uuid_key].as_string().is_(None), col[ref.id_key].as_integer().in_(ids))
    return or_(by_uuid, by_id)


def dependants(conn, runs: Iterable[tuple[int, str]]) -> dict[int, list[tuple[int, str]]]:
    """{id of a given run: [(id of a run that names it, the relation)]} for `runs`, given as
    (id, uuid) pairs; runs nobody names are left out."""
    pairs = list(runs)
    id_of_uuid = {u: i for i, u in pairs}
    given = set(id_of_uuid.values())
    out: dict[int, list[tuple[int, str]]] = {}
    for chunk in in_chunks(pairs):
        ids, uuids = [i for i, _ in chunk], [u for _, u in chunk]
        for ref in REFERENCES:
            q = select(Run.id, Run.config).where(_referring(ref, ids, uuids)).order_by(Run.id)
            for dep_id, config in conn.execute(q):
                for r, rid, uid in named(config):
                    if r != ref:
                        continue
                    target = id_of_uuid.get(uid) if uid is not None else rid
                    if target in given and dep_id != target:
                        out.setdefault(target, []).append((dep_id, ref.what))
    return out


def closure(conn, runs: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """`runs` and every run that depends on them, directly or not (for --cascade)."""
    seen = {i: u for i, u in runs}
    frontier = list(runs)
    while frontier:
        deps = {d for lst in dependants(conn, frontier).values() for d, _ in lst} - set(seen)
        if not deps:
            break
        frontier = []
        for chunk in in_chunks(sorted(deps)):
            for i, u in conn.execute(select(Run.id, Run.uuid).where(Run.id.in_(chunk))):
                seen[i] = u
                frontier.append((i, u))
    return sorted(seen.items())
