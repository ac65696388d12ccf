"""Tests for racli.store.engine/models (schema, migrations, opening) and racli.environment.

The store-level tests run on both backends (`store_url`: SQLite and a throwaway
PostgreSQL server, see conftest.py); SQLite-only behaviour uses `sqlite_store`."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
from datetime import datetime, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from helpers import ENV_INFO, GPU_ENV_INFO, db_dump, record_run, sha256
from sqlalchemy import Column, Integer, MetaData, String, inspect, select, text

from racli import environment
from racli.errors import BadInput
from racli.store import migrate as store_migrate
from racli.store.engine import open_store
from racli.store.migrate import HEAD_REVISION, current_revision
from racli.store.models import Base, Environment, GateValue, Metric, Run, Timing
from racli.store.recorder import environment_id
from racli.store.urls import database_url

PUBLIC_COLUMNS = {
    "environments": {
        "id",
        "fingerprint",
        "hostname",
        "os",
        "python",
        "torch",
        "cuda",
        "gpu_name",
        "gpu_index",
        "gpu_uuid",
        "gpu_count",
        "driver",
        "cpu",
        "created_at",
    },
    "runs": {
        "id",
        "kind",
        "attn",
        "status",
        "config",
        "config_hash",
        "seed",
        "tag",
        "git_commit",
        "env_id",
        "started_at",
        "finished_at",
        "heartbeat_at",
        "error",
        "iterations",
        "tokens",
        "epochs",
        "train_seconds",
        "val_loss",
        "tokens_per_s",
        "uuid",
        "excluded",
        "exclude_reason",
        "origin",
    },
    "timings": {
        "run_id",
        "attn",
        "mode",
        "phase",
        "batch",
        "seq",
        "heads",
        "head_dim",
        "dtype",
        "device",
        "median_ms",
        "p10_ms",
        "p90_ms",
        "iters",
        "tflops",
        "status",
        "reason",
    },
    "metrics": {"run_id", "step", "name", "value", "elapsed_s"},
    "gate_values": {"run_id", "step", "layer", "head", "name", "value"},
    "jobs": {
        "experiment",
        "kind",
        "arm",
        "seed",
        "launcher",
        "scheduler_job",
        "state",
        "run_id",
        "owner",
        "claimed_at",
    },
}


@pytest.fixture
def store(store_url):
    s = open_store(store_url)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path):
    s = open_store(str(tmp_path / "ra.db"))
    yield s
    s.close()


def _columns(conn, table: str) -> set[str]:
    return {c["name"] for c in inspect(conn).get_columns(table)}


@contextlib.contextmanager
def _sqlite(path):
    """A raw connection that commits and CLOSES on exit (sqlite3's own context
    manager only commits: an open WAL connection would leave rows in the -wal
    file, and the next reader's checkpoint would rewrite the main file)."""
    raw = sqlite3.connect(str(path))
    try:
        with raw:
            yield raw
    finally:
        raw.close()


# ---- schema ------------------------------------------------------------------


def test_migrations_create_exactly_the_public_tables(store):
    with store.engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        assert tables == set(PUBLIC_COLUMNS) | {"alembic_version"}
        for table, cols in PUBLIC_COLUMNS.items():
            missing = cols - _columns(conn, table)
            assert not missing, f"{table} lacks {missing}"
        fks = {
            (fk["referred_table"], tuple(fk["constrained_columns"]))
            for t in ("timings", "metrics", "gate_values")
            for fk in inspect(conn).get_foreign_keys(t)
        }
        assert fks == {("runs", ("run_id",))}


def test_head_revision_matches_the_migration_scripts(store):
    script = ScriptDirectory.from_config(store_migrate._alembic_config())
    assert script.get_current_head() == HEAD_REVISION
    assert len(script.get_heads()) == 1
    assert current_revision(store.engine) == HEAD_REVISION
    assert set(store_migrate.known_revisions()) == {
        "0001",
        "0002",
        "0003",
        "0004",
        "0005",
        "0006",
        "0007",
        "0008",
    }


def _diffs(engine, metadata) -> list:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return compare_metadata(ctx, metadata)


def test_orm_metadata_matches_the_migrated_schema(store):
    assert _diffs(store.engine, Base.metadata) == []


def test_metadata_comparison_would_see_drift(store):
    # the comparison above is meaningful: it notices an added column, a changed type
    # and a changed nullability
    md = MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(md)
    md.tables["metrics"].append_column(Column("extra", Integer))
    md.tables["runs"].c.kind.type = String(99)
    md.tables["runs"].c.attn.nullable = False
    kinds = {d[0] if isinstance(d, tuple) else d[0][0] for d in _diffs(store.engine, md)}
    assert "add_column" in kinds
    assert "modify_type" in kinds
    assert "modify_nullable" in kinds


def test_sqlite_pragmas(sqlite_store):
    store = sqlite_store
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar().lower() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    # WAL is a property of the file: a plain sqlite3 connection sees it too
    with _sqlite(store.engine.url.database) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"


def test_foreign_keys_are_enforced(store):
    with pytest.raises(Exception, match="(?i)foreign key"), store.writing() as conn:
        conn.execute(Metric.__table__.insert().values(run_id=12345, step=0, name="x", value=1.0))


# ---- round trip ----------------------------------------------------------------


def test_round_trip_every_table(store):
    now = datetime(2026, 1, 2, 3, 4, 5, 678000)
    with store.write_session() as s, s.begin():
        env = Environment(fingerprint="f" * 32, created_at=now, **GPU_ENV_INFO)
        run = Run(
            kind="train",
            attn="ra_v5",
            status="finished",
            config={"a": [1, 2], "b": {"c": None}},
            config_hash="h" * 16,
            seed=7,
            tag="t",
            git_commit="abc-dirty",
            environment=env,
            started_at=now,
            finished_at=now,
            heartbeat_at=now,
            error=None,
            iterations=100,
            tokens=10_000_000_000,
            epochs=1.25,
            train_seconds=3600.5,
            val_loss=3.125,
            tokens_per_s=512_345.5,
        )
        s.add(run)
        s.flush()
        s.add_all(
            [
                Timing(
                    run_id=run.id,
                    attn="ra_v5",
                    mode="compile",
                    phase="fwd_bwd",
                    batch=8,
                    seq=1024,
                    heads=12,
                    head_dim=64,
                    dtype="float16",
                    device="cuda",
                    median_ms=0.489,
                    p10_ms=0.48,
                    p90_ms=0.5,
                    iters=100,
                    tflops=123.4,
                    status="ok",
                    reason=None,
                    backend="flash",
                    compile_s=12.5,
                ),
                Metric(run_id=run.id, step=10, name="train_loss", value=2.5, elapsed_s=1.5),
                GateValue(run_id=run.id, step=10, layer=1, head=3, name="w_rec", value=-0.25),
            ]
        )
        run_id = run.id
    with store.session() as s:
        got = s.get(Run, run_id)
        assert (got.kind, got.attn, got.status, got.seed, got.tag, got.git_commit) == (
            "train",
            "ra_v5",
            "finished",
            7,
            "t",
            "abc-dirty",
        )
        assert got.config == {"a": [1, 2], "b": {"c": None}}
        assert got.started_at == now and got.finished_at == now and got.heartbeat_at == now
        assert (
            got.iterations,
            got.tokens,
            got.epochs,
            got.train_seconds,
            got.val_loss,
            got.tokens_per_s,
        ) == (100, 10_000_000_000, 1.25, 3600.5, 3.125, 512_345.5)
        env = got.environment
        assert env.fingerprint == "f" * 32 and env.created_at == now
        assert {k: getattr(env, k) for k in GPU_ENV_INFO} == GPU_ENV_INFO
        t = s.scalars(select(Timing).where(Timing.run_id == run_id)).one()
        assert (
            t.attn,
            t.mode,
            t.phase,
            t.batch,
            t.seq,
            t.heads,
            t.head_dim,
            t.dtype,
            t.device,
            t.median_ms,
            t.p10_ms,
            t.p90_ms,
            t.iters,
            t.tflops,
            t.status,
            t.reason,
            t.backend,
            t.compile_s,
        ) == (
            "ra_v5",
            "compile",
            "fwd_bwd",
            8,
            1024,
            12,
            64,
            "float16",
            "cuda",
            0.489,
            0.48,
            0.5,
            100,
            123.4,
            "ok",
            None,
            "flash",
            12.5,
        )
        m = s.scalars(select(Metric).where(Metric.run_id == run_id)).one()
        assert (m.step, m.name, m.value, m.elapsed_s) == (10, "train_loss", 2.5, 1.5)
        g = s.scalars(select(GateValue).where(GateValue.run_id == run_id)).one()
        assert (g.step, g.layer, g.head, g.name, g.value) == (10, 1, 3, "w_rec", -0.25)
    # and users reading with plain SQL see the same values under the public names
    with store.engine.connect() as conn:
        row = conn.execute(
            text("SELECT kind, attn, status, seed, val_loss, epochs, tokens FROM runs")
        ).one()
        assert tuple(row) == ("train", "ra_v5", "finished", 7, 3.125, 1.25, 10_000_000_000)
        json_item = (
            "(config->'a'->>1)::int"
            if store.engine.dialect.name == "postgresql"
            else "json_extract(config, '$.a[1]')"
        )
        assert conn.execute(text(f"SELECT {json_item} FROM runs")).scalar() == 2


def test_defaults_of_a_new_run(store):
    with store.write_session() as s, s.begin():
        run = Run(kind="bench", config={}, config_hash="x")
        s.add(run)
    with store.session() as s:
        got = s.get(Run, run.id)
        assert got.status == "running"
        assert isinstance(got.started_at, datetime)


# ---- migrations keep data ------------------------------------------------------------

TABLES = ("environments", "runs", "timings", "metrics", "gate_values")


def _counts(engine) -> dict:
    with engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in TABLES}


def _metric_rows(engine) -> list:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(text("SELECT run_id, step, name, value FROM metrics ORDER BY id"))
        ]


@pytest.mark.slow
def test_downgrade_upgrade_keeps_data(store_url):
    store = open_store(store_url)
    train = record_run(store, kind="train", n_metrics=6)
    bench = record_run(store, kind="bench")
    before = _counts(store.engine)
    assert before == {"environments": 1, "runs": 2, "timings": 2, "metrics": 7, "gate_values": 8}
    metrics_before = _metric_rows(store.engine)
    store.close()

    store = open_store(store_url, migrate=False)
    store_migrate.downgrade(store.engine, "0001")
    assert current_revision(store.engine) == "0001"
    with store.engine.connect() as conn:
        assert "epochs" not in _columns(conn, "runs")
        assert "backend" not in _columns(conn, "timings")
    assert _counts(store.engine) == before, "a downgrade must not lose rows"
    assert _metric_rows(store.engine) == metrics_before
    with store.engine.connect() as conn:
        assert tuple(
            conn.execute(text("SELECT status, val_loss FROM runs WHERE id=:i"), {"i": train}).one()
        ) == ("finished", 3.51)
    store.close()

    # opening the old database for writing upgrades it (as every writing command does)
    store = open_store(store_url)
    assert current_revision(store.engine) == HEAD_REVISION
    with store.engine.connect() as conn:
        assert "epochs" in _columns(conn, "runs")
        assert {"backend", "compile_s"} <= _columns(conn, "timings")
        if store.engine.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
        assert (
            conn.execute(text("SELECT epochs FROM runs WHERE id=:i"), {"i": train}).scalar() is None
        )
        assert (
            conn.execute(text("SELECT kind FROM runs WHERE id=:i"), {"i": bench}).scalar()
            == "bench"
        )
        # the (rebuilt, on SQLite) runs table is still the parent of metrics, cascade wired
        fks = inspect(conn).get_foreign_keys("metrics")
        assert [
            (
                f["referred_table"],
                f["constrained_columns"],
                f["referred_columns"],
                (f.get("options") or {}).get("ondelete", "").upper(),
            )
            for f in fks
        ] == [("runs", ["run_id"], ["id"], "CASCADE")]
    assert _diffs(store.engine, Base.metadata) == []
    assert _counts(store.engine) == before, "an upgrade must not lose rows"
    assert _metric_rows(store.engine) == metrics_before
    store.close()


# ---- opening -----------------------------------------------------------------------


def _newer_schema_db(path, journal="delete"):
    with _sqlite(path) as raw:
        raw.execute(f"PRAGMA journal_mode={journal}")
        raw.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        raw.execute("INSERT INTO alembic_version VALUES ('9999')")
        raw.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, future_column TEXT)")
        raw.execute("INSERT INTO runs VALUES (1, 'from the future')")
    return path


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_newer_schema_is_refused_untouched(tmp_path, journal):
    path = _newer_schema_db(tmp_path / "newer.db", journal)
    digest = sha256(path)
    files = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(BadInput, match="9999.*newer"):
        open_store(str(path))
    assert sha256(path) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == files


def test_non_ra_database_is_refused_untouched(tmp_path):
    path = tmp_path / "other.db"
    with _sqlite(path) as raw:
        raw.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        raw.execute("INSERT INTO customers VALUES (1, 'x')")
    digest = sha256(path)
    with pytest.raises(BadInput, match="not an ra database"):
        open_store(str(path))
    assert sha256(path) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_file_that_is_not_a_database_is_bad_input(tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not sqlite at all\n" * 200)
    digest = sha256(path)
    with pytest.raises(BadInput, match="cannot open database"):
        open_store(str(path))
    assert sha256(path) == digest


def test_create_false_refuses_a_missing_file(tmp_path):
    path = tmp_path / "missing.db"
    with pytest.raises(BadInput, match="no database"):
        open_store(str(path), create=False)
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        open_store(str(tmp_path / "nodir" / "ra.db"))
    assert list(tmp_path.iterdir()) == []


def test_directory_as_database_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="directory"):
        open_store(str(tmp_path))


def test_sqlalchemy_url_is_accepted(tmp_path):
    path = tmp_path / "url.db"
    url = f"sqlite:///{path}"
    assert database_url(url) == url
    assert database_url(str(path)) == f"sqlite:///{path.resolve()}"
    store = open_store(url)
    run_id = record_run(store)
    store.close()
    assert path.is_file()
    with _sqlite(path) as raw:
        assert raw.execute("SELECT id FROM runs").fetchall() == [(run_id,)]
    store = open_store(url, create=False)
    assert current_revision(store.engine) == HEAD_REVISION
    store.close()


def test_reopening_is_idempotent(tmp_path):
    path = tmp_path / "re.db"
    open_store(str(path)).close()
    first = db_dump(path)
    open_store(str(path)).close()
    assert db_dump(path) == first


# ---- environment --------------------------------------------------------------------

ENV_FIELDS = {
    "hostname",
    "os",
    "python",
    "torch",
    "cuda",
    "cudnn",
    "gpu_name",
    "gpu_index",
    "gpu_uuid",
    "gpu_count",
    "gpu_memory_gb",
    "driver",
    "cpu",
    "cpu_count",
}


def test_collect_fields():
    import platform

    import torch

    info = environment.collect()
    assert set(info) == ENV_FIELDS
    assert info["torch"] == torch.__version__
    assert info["python"] == platform.python_version()
    assert info["hostname"] and info["os"] and info["cpu"]
    assert isinstance(info["cpu_count"], int) and info["cpu_count"] >= 1
    if torch.cuda.is_available():
        assert info["gpu_count"] >= 1 and info["gpu_name"] and info["cuda"]
    else:
        assert info["gpu_count"] == 0
        assert info["gpu_name"] is None and info["cuda"] is None and info["driver"] is None
    # every collected field is a column of environments
    assert ENV_FIELDS <= {c.name for c in Environment.__table__.columns}


def test_fingerprint_is_stable_and_sensitive():
    fp = environment.fingerprint_of(ENV_INFO)
    assert fp == environment.fingerprint_of(dict(reversed(list(ENV_INFO.items()))))
    assert fp == environment.fingerprint_of(dict(ENV_INFO))
    assert len(fp) <= 64
    seen = {fp}
    for key in ENV_INFO:
        changed = {**ENV_INFO, key: "something else"}
        other = environment.fingerprint_of(changed)
        assert other not in seen, key
        seen.add(other)


def test_environment_id_one_row_per_fingerprint(store):
    a = environment_id(store, dict(ENV_INFO))
    assert environment_id(store, dict(ENV_INFO)) == a
    b = environment_id(store, dict(GPU_ENV_INFO))
    c = environment_id(store, {**ENV_INFO, "torch": "2.14.0"})
    assert len({a, b, c}) == 3
    with store.session() as s:
        rows = s.scalars(select(Environment).order_by(Environment.id)).all()
        assert [r.id for r in rows] == [a, b, c]
        assert rows[1].gpu_name == GPU_ENV_INFO["gpu_name"]
        assert rows[0].fingerprint == environment.fingerprint_of(ENV_INFO)


def test_env_class():
    assert environment.env_class("NVIDIA H100", "2.13.0") == environment.env_class(
        "NVIDIA H100", "2.13.0"
    )
    assert environment.env_class(None, "2.13.0") != environment.env_class("NVIDIA H100", "2.13.0")
    assert environment.env_class("NVIDIA H100", "2.13.0") != environment.env_class(
        "NVIDIA H100", "2.14.0"
    )


def _git(cwd, *args):
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "commit.gpgsign=false",
            *args,
        ],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_commit(tmp_path, monkeypatch):
    outside = tmp_path / "plain"
    outside.mkdir()
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "f.txt").write_text("one\n")
    _git(repo, "add", "f.txt")
    _git(repo, "commit", "-q", "-m", "first")
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert len(sha) == 40
    assert environment.git_commit(repo) == sha
    (repo / "untracked.txt").write_text("ignored by the dirty check\n")
    assert environment.git_commit(repo) == sha
    (repo / "f.txt").write_text("two\n")
    assert environment.git_commit(repo) == sha + "-dirty"
    # the sha fits the column
    assert len(sha + "-dirty") <= Run.__table__.c.git_commit.type.length
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert environment.git_commit(outside) is None


def test_round_trip_keeps_datetimes_naive_utc(store):
    run_id = record_run(store)
    with store.session() as s:
        run = s.get(Run, run_id)
    assert run.started_at.tzinfo is None
    assert (
        abs((datetime.now(timezone.utc).replace(tzinfo=None) - run.started_at).total_seconds()) < 60
    )
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 1


# ---- packaging of the migration scripts -------------------------------------------------


def test_scripts_come_from_the_checkout_without_a_top_level_package():
    import sys

    from helpers import REPO

    assert store_migrate.script_location() == REPO / "migrations"
    assert "migrations" not in sys.modules  # never imported as a top-level package


@pytest.mark.slow
def test_wheel_ships_the_scripts_as_racli_migrations(tmp_path):
    """A built wheel holds the scripts under racli/_migrations (no top-level
    `migrations` package), and an install of it finds and runs them."""
    import sys
    import zipfile

    from helpers import REPO

    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "-w", str(tmp_path), "--no-deps", "-q"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    (wheel,) = tmp_path.glob("ra-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        assert zf.read(top_level).decode().split() == ["racli", "racli_models"]
        zf.extractall(tmp_path / "site")
    scripts = {n for n in names if n.startswith("racli/_migrations/")}
    assert {
        "racli/_migrations/env.py",
        "racli/_migrations/script.py.mako",
        "racli/_migrations/versions/0001_initial.py",
    } <= scripts
    assert not any(n.startswith("migrations/") for n in names)
    # the installed copy (here: the unpacked wheel, away from the checkout) migrates a store
    code = (
        "import sys; from racli.store.engine import open_store; from racli.store.migrate import "
        "script_location, current_revision; s = open_store(sys.argv[1]); "
        "print(script_location(), current_revision(s.engine))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "w.db")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "site")},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == [str(tmp_path / "site" / "racli" / "_migrations"), HEAD_REVISION]


@pytest.mark.gpu
def test_environment_is_per_device():
    import torch

    from racli.environment import env_class

    a = environment.collect(0)
    assert a["gpu_index"] == 0 and a["gpu_name"] == torch.cuda.get_device_name(0)
    assert a["gpu_uuid"] is None or a["gpu_uuid"].startswith("GPU-")
    if torch.cuda.device_count() > 1:  # two GPUs of one host: two environments, one class
        b = environment.collect(1)
        assert b["gpu_index"] == 1 and b["gpu_uuid"] != a["gpu_uuid"]
        assert environment.fingerprint_of(a) != environment.fingerprint_of(b)
        assert env_class(a["gpu_name"], a["torch"]) == env_class(b["gpu_name"], b["torch"])


def test_metric_points_whole_and_last_half(store):
    """The curves the speed checks fit come back as the driver gives them, on both
    backends: integers and floats in step order, the whole curve or its last half."""
    from racli.store.queries import metric_points
    from racli.store.recorder import RunRecorder

    ids = []
    for steps in ((30, 10, 20, 40), (7,), ()):
        rec = RunRecorder.start(
            store, kind="train", attn="baseline", config={"seed": 1}, seed=1,
            env_info=ENV_INFO, git_commit="0123abcd", heartbeat=False,
        )  # fmt: skip
        for step in steps:
            rec.metric(step, "val_loss", 4.0 - step / 100)
            rec.metric(step, "train_loss", 9.0)
        rec.finish()
        ids.append(rec.run_id)
    whole = metric_points(store, ids, "val_loss")
    assert whole == {
        ids[0]: [(10, 3.9), (20, 3.8), (30, 3.7), (40, 3.6)],
        ids[1]: [(7, 3.93)],
        ids[2]: [],
    }
    assert all(type(s) is int and type(v) is float for c in whole.values() for s, v in c)
    half = metric_points(store, ids, "val_loss", last_half=True)
    assert half == {ids[0]: [(20, 3.8), (30, 3.7), (40, 3.6)], ids[1]: [(7, 3.93)], ids[2]: []}


def test_a_store_versioned_between_two_reads_is_not_called_foreign(store_url, monkeypatch):
    """Several processes open one fresh store at once: one reads no revision, another
    creates the schema, the first then finds tables. It reads the revision again and goes
    on (it refused the store as "not an ra database", seen once in the suite on
    PostgreSQL); tables without a revision are still refused."""
    from racli.store import engine as store_engine

    first = {"read": False}
    real = store_engine.current_revision

    def late(engine):  # the first read happens before the other process's commit
        if not first["read"]:
            first["read"] = True
            return None
        return real(engine)

    open_store(store_url).close()  # the schema another process created meanwhile
    monkeypatch.setattr(store_engine, "current_revision", late)
    store = open_store(store_url)  # was: BadInput "holds tables ... but no ra schema version"
    try:
        assert real(store.engine) == HEAD_REVISION and first["read"]
    finally:
        store.close()
    raw = store_engine.make_engine(store_url)
    try:
        with raw.begin() as conn:  # tables, no version
            conn.execute(text("DROP TABLE alembic_version"))
    finally:
        raw.dispose()
    monkeypatch.setattr(store_engine, "current_revision", real)
    with pytest.raises(BadInput, match="no ra schema version"):
        open_store(store_url)
