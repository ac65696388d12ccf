"""What every command shares: the global options and how they resolve.

`--db` and `--config` are accepted before the command (`ra --db x.db runs`)
and on every command (`ra runs --db x.db`); the command's own value wins.
No torch here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from racli.commands.completers import (  # noqa: F401 (the completers options attach)
    complete_attention,
    complete_launcher,
    complete_run_id,
    complete_tag,
    complete_train_run,
)
from racli.errors import BadInput
from racli.names import comma_list as parse_csv_list  # noqa: F401 (one comma-list rule)
from racli.text import jsonout

if TYPE_CHECKING:  # racli.config.schema imports pydantic, which `ra --help` need not wait for
    from racli.config.schema import Config

# completion of option values: racli.commands.completers (complete_launcher for --launcher
# local/slurm/ray, complete_run_id, complete_attention, ...), attached with
# typer.Option(..., autocompletion=common.complete_launcher)
DbOpt = Annotated[
    Optional[str],
    typer.Option(
        "--db",
        help="Results database: a path or SQLAlchemy URL (default: ra.yaml's db; env RA_DB).",
        show_default=False,
    ),
]
ConfigOpt = Annotated[
    Optional[str],
    typer.Option(
        "--config",
        help="Configuration file (default: ./ra.yaml, else the packaged defaults).",
        show_default=False,
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")
]

GLOBAL: dict[str, Any] = {"db": None, "config": None, "debug": False}


def config(path: str | None = None) -> Config:
    from racli.config import load_config

    return load_config(path if path is not None else GLOBAL["config"])


def db_location(db: str | None, cfg: Config) -> str:
    from racli.config import resolve_db

    return resolve_db(db if db is not None else GLOBAL["db"], cfg)


def location_text(location: str) -> str:
    """A store's location as output shows it: a URL's password masked, bytes of a file
    name that are not UTF-8 as \\xNN, control characters made visible."""
    import os

    from racli.store.urls import shown
    from racli.text.terminal import visible

    return visible(os.fsencode(shown(location)).decode("utf-8", "backslashreplace"))


def check_not_input(
    path, db: str | None, cfg: Config, what: str, *, data: str | None = None
) -> None:
    """BadInput when an output file `path` is one of the command's inputs, by name, link or
    hard link: the store (or one of its -wal, -shm or -journal files), the config file in
    use or the ./ra.yaml a later command would read; or lies in the store's checkpoint
    folder or the data folder `data`. Writing there would replace what is recorded, the
    settings, a run's weights or the data."""
    if path is None:
        return
    from racli.store.checkpoints import checkpoint_dir
    from racli.store.urls import SQLITE_SIDE_FILES, sqlite_path
    from racli.text.outputs import check_not_input as refuse_inputs

    inputs, folders = [], []
    try:
        location = db_location(db, cfg)
        store = sqlite_path(location)
        folders.append((checkpoint_dir(location), "the store's checkpoint folder"))
    except (BadInput, ValueError):
        store = None  # an unusable location is reported where the store is opened
    if store is not None:
        inputs.append((store, "the results database"))
        inputs += [
            (store.with_name(store.name + s), f"the results database's {s} file")
            for s in SQLITE_SIDE_FILES
        ]
    if Path(cfg.source).is_file():
        inputs.append((Path(cfg.source), "the config file"))
    inputs.append((Path("ra.yaml"), "the config file ra reads in this folder"))
    if data is not None and Path(data).expanduser().is_dir():
        folders.append((Path(data).expanduser(), "the data folder"))
    refuse_inputs(Path(path), what, inputs, folders)


def open_db(
    db: str | None,
    cfg: Config,
    *,
    create: bool = True,
    readonly: bool = False,
    run_ids=(),
    run_check=None,
):
    """The store (racli.store.engine.open_store); `run_ids`: the runs a writing command
    works on, each checked to be recorded (and by `run_check`) before the store is
    migrated."""
    from racli.store.engine import open_store

    return open_store(
        db_location(db, cfg),
        create=create,
        readonly=readonly,
        run_ids=run_ids,
        run_check=run_check,
    )


def print_json(data: Any) -> None:
    """`data` as JSON on stdout (racli.text.jsonout: NaN and infinity as null)."""
    sys.stdout.write(jsonout.dumps(data) + "\n")


def console():
    from rich.console import Console

    return Console()
