"""The column lists of the store's tables, in the orders ra's outputs use.

Derived from the ORM models (racli.store.models): a column added by a revision
shows up in every list of its group. The curated orders (CSV export, `ra runs
show`, `ra runs diff`) are composed here from those groups, in one place.
"""

from __future__ import annotations

from racli.store.models import Base, Environment, Run, Timing


def names(model: type[Base], *, leave_out: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The model's column names in table order, without `leave_out`."""
    return tuple(c.name for c in model.__table__.columns if c.name not in leave_out)


def _span(model: type[Base], first: str, last: str) -> tuple[str, ...]:
    cols = names(model)
    return cols[cols.index(first) : cols.index(last) + 1]


def _moved(cols: tuple[str, ...], **after: str) -> tuple[str, ...]:
    """`cols` with each key moved to just after its value."""
    out = [c for c in cols if c not in after]
    for name, anchor in after.items():
        out.insert(out.index(anchor) + 1, name)
    return tuple(out)


# ---- groups of the runs table ----
RUN_FIGURES = _span(Run, "iterations", "tokens_per_s")  # a train run's final figures
RUN_IDENTITY = _span(Run, "uuid", "origin")  # revision 0004: identity, exclusion, origin
# a run as `ra runs --json` lists it (its config and identity follow separately)
RUN_FIELDS = names(Run, leave_out=("config", *RUN_IDENTITY))

# ---- environments ----
ENV_FIELDS = names(Environment)
# what `ra runs show` lists and `ra runs diff` compares: the machine, then its fingerprint
ENV_SHOWN = (*names(Environment, leave_out=("id", "fingerprint", "created_at")), "fingerprint")

# ---- timings ----
TIMING_FIELDS = names(Timing, leave_out=("id", "run_id"))  # one recorded timing row
# `ra runs show --json`: revision 0003's backend beside the device, compile time after FLOPs
TIMING_SHOWN = _moved(TIMING_FIELDS, backend="device", compile_s="tflops")

# ---- curated orders of the runs outputs ----
# `ra runs export`: the CSV header (a public interface), then `config`
EXPORT_COLUMNS = (
    *("id", "kind", "attn", "status", "seed", "tag", "config_hash", "git_commit", "env_id"),
    *("gpu_name", "torch", "started_at", "finished_at"),
    *RUN_FIGURES,
    "error",
    *RUN_IDENTITY,
    *("ra_version", "ra_commit"),
)
# `ra runs show`: the run's fields listed under its title
SHOW_FIELDS = (
    *("seed", "tag", "config_hash", "uuid", "origin"),
    *("started_at", "finished_at", "heartbeat_at"),
    *RUN_FIGURES,
    "error",
)
# `ra runs diff`: the run section
DIFF_FIELDS = (
    *("kind", "attn", "status", "seed", "tag", "excluded", "exclude_reason", "config_hash"),
    *("uuid", "origin", "started_at", "finished_at", "error"),
)
