"""Shared test set-up: one CPU thread a process; the `gpu` marker skips without CUDA (and
keeps the gpu tests on one pytest-xdist worker where they run); the store backends.

`store_url` runs a test once per backend: a SQLite file in the test's temporary
directory, and a fresh database on a throwaway PostgreSQL server (tests/pg.py)
started once per session. Without PostgreSQL binaries the postgres cases are
skipped, except under CI (`CI` set), where they fail: CI must test both.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys

import pytest
from helpers import in_ci

BACKENDS = ["sqlite", "postgres"]

# One CPU thread a process (read by torch when it starts; child processes inherit it):
# the tests' models are tiny, and the pytest-xdist workers (one a core), each with a
# training child or two, would otherwise oversubscribe the cores with OpenMP threads
# spinning against each other (the whole suite took 40% more CPU time). A setting of the
# caller's own wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# A suite started in the background (`cmd &`, nohup) has SIGINT ignored, and an ignored
# signal stays ignored in every child it starts: the Ctrl-C tests' ra processes would
# never see their SIGINT. Python's own handler here makes the children start with the
# default again, as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.fixture(autouse=True, scope="session")
def _dynamo_compiles_every_model():
    """Dynamo's recompile limit raised for the session. A worker compiles `GPT.forward` for
    many configurations across the tests it is handed; past the limit (8 a code object)
    dynamo runs the next one uncompiled with only a warning, and a test of compiled
    behaviour would then test eager code. Only where collection imported torch: the
    torch-free tests (verdicts, config, compare) stay free of its import."""
    if "torch" not in sys.modules:
        yield
        return
    import torch._dynamo

    with torch._dynamo.config.patch(recompile_limit=512, accumulated_recompile_limit=4096):
        yield


# tryfirst: pytest-xdist reads the xdist_group marks in a hook of its own, which must see
# the one added here
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    if not _cuda_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in gpu:
            item.add_marker(skip)
        # skipped tests need no group; and `--dist loadgroup` hands the groups out largest
        # first, one a worker: a group of ~170 skipped tests would put both cluster groups
        # (the suite's longest work) on the other worker, one after the other
        return
    for item in gpu:  # one GPU: its tests run one at a time, on one pytest-xdist worker
        item.add_marker(pytest.mark.xdist_group("gpu"))


def _unavailable(reason: str):
    if in_ci():
        pytest.fail(f"PostgreSQL tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


@pytest.fixture(scope="session")
def pg_server():
    """One throwaway PostgreSQL server for the session (started on first use)."""
    from pg import PgServer, find_bindir

    if importlib.util.find_spec("psycopg") is None:
        _unavailable("the psycopg driver is not installed (pip install 'ra[postgres]')")
    bindir = find_bindir()
    if bindir is None:
        _unavailable(
            "initdb/pg_ctl not found (install PostgreSQL, e.g. apt-get install postgresql)"
        )
    server = PgServer(bindir)
    try:
        server.start()
    except Exception:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture
def own_pg_server():
    """`own_pg_server(password=None, durable=False)`: a PostgreSQL server of the test's own
    (one it may stop and start again: durable, so that a commit survives the stop; or one
    that asks for a password), stopped after the test."""
    from pg import PgServer, find_bindir

    if importlib.util.find_spec("psycopg") is None:
        _unavailable("the psycopg driver is not installed (pip install 'ra[postgres]')")
    bindir = find_bindir()
    if bindir is None:
        _unavailable("initdb/pg_ctl not found (install PostgreSQL)")
    servers = []

    def start(password: str | None = None, durable: bool = False):
        server = PgServer(bindir, password=password, durable=durable)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty PostgreSQL database for one test."""
    url = pg_server.new_database()
    yield url
    pg_server.drop_database(url)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def store_url(backend, request, tmp_path) -> str:
    """Where a test's store lives: a SQLite path, or a PostgreSQL URL."""
    if backend == "sqlite":
        return str(tmp_path / "ra.db")
    return request.getfixturevalue("pg_url")


# ---- clusters (tests/cluster.py): one of each per session, started on first use ----------


def _cluster_unavailable(what: str, reason: str):
    if in_ci():
        pytest.fail(f"{what} tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"{what} tests skipped: {reason}")


@pytest.fixture(scope="session")
def slurm_cluster():
    """A single-host Slurm (two logical nodes, fake GPUs, accounting on)."""
    from cluster import SlurmCluster, missing_slurm

    if importlib.util.find_spec("submitit") is None:
        _cluster_unavailable("Slurm", "submitit is not installed (pip install 'ra[slurm]')")
    missing = missing_slurm()
    if missing:
        _cluster_unavailable(
            "Slurm",
            f"{', '.join(missing)} not found "
            f"(apt-get install slurm-wlm slurmdbd munge mariadb-server)",
        )
    cluster = SlurmCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def ray_cluster():
    """A one-node Ray cluster on 127.0.0.1."""
    from cluster import RayCluster

    if importlib.util.find_spec("ray") is None:
        _cluster_unavailable("Ray", "ray is not installed (pip install 'ra[ray]')")
    cluster = RayCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def ray_nodes_cluster():
    """A Ray cluster of two logical nodes on 127.0.0.1."""
    from cluster import RayNodesCluster

    if importlib.util.find_spec("ray") is None:
        _cluster_unavailable("Ray", "ray is not installed (pip install 'ra[ray]')")
    cluster = RayNodesCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def tmpfs(tmp_path):
    """`tmpfs(path, size)`: a small RAM file system mounted at `path` (unmounted after the
    test): a disk that fills up. Mounting needs root; where it is impossible the test is
    skipped, except under CI, where it fails."""
    mounted = []

    def mount(path, size: str = "4m"):
        path.mkdir(parents=True, exist_ok=True)
        try:
            res = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(path)],
                capture_output=True,
                text=True,
                check=False,
            )
            failure = None if res.returncode == 0 else (res.stderr or res.stdout).strip()
        except OSError as exc:
            failure = str(exc)
        if failure is not None:
            reason = f"cannot mount a tmpfs: {failure or 'not root?'}"
            if in_ci():
                pytest.fail(f"disk-full tests cannot run under CI: {reason}", pytrace=False)
            pytest.skip(f"disk-full tests skipped: {reason}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
