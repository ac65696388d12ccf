"""A throwaway PostgreSQL server for the tests.

`PgServer.start()` makes a cluster with `initdb` in a fresh temporary directory
and starts it with `pg_ctl` on 127.0.0.1 (a free port; the unix socket in the
same directory, so nothing system-wide is touched). `new_database()` creates an
empty database and returns its SQLAlchemy URL (`postgresql+psycopg://...`);
`stop()` stops the server and removes the directory.

PostgreSQL refuses to run as root: when the tests run as root, the cluster is
made and run as the `postgres` system user (created if missing), through
`runuser` (or `su`). Binaries are looked up with `pg_config --bindir`, then
/usr/lib/postgresql/*/bin, then PATH.
"""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "ra"
RUN_AS = "postgres"


def find_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        try:
            out = subprocess.run(
                ["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass

    def version(p: str) -> tuple:
        tail = Path(p).parent.name
        return tuple(int(x) for x in tail.split(".") if x.isdigit())

    candidates += [
        Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    ]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for d in candidates:
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(name)


class PgServer:
    """`password`: connections over TCP must give it (scram-sha-256), else anyone may."""

    def __init__(self, bindir: Path, password: str | None = None, durable: bool = False):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="ra-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        self.password = password
        # durable: a commit is written out before it returns, so it survives a crash of the
        # server (`stop_now`); the shared test server trades that for speed
        self.durable = durable
        self._n = 0
        self.started = False

    def _cmd(self, *args: str) -> list[str]:
        if not self.as_root:
            return list(args)
        if shutil.which("runuser"):
            return ["runuser", "-u", RUN_AS, "--", *args]
        return ["su", "-s", "/bin/sh", RUN_AS, "-c", shlex.join(args)]

    def _run(self, *args: str, timeout: float = 120) -> None:
        res = subprocess.run(
            self._cmd(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.root,
        )
        if res.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({res.returncode}): "
                f"{(res.stderr or res.stdout).strip()[-1500:]}"
            )

    def start(self) -> PgServer:
        if self.as_root:
            user = _ensure_user(RUN_AS)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        auth = ["--auth=trust"]
        if self.password is not None:
            pwfile = self.root / "pwfile"
            pwfile.write_text(self.password + "\n")
            if self.as_root:
                os.chown(pwfile, user.pw_uid, user.pw_gid)
            auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            *auth,
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        self.start_again()
        return self

    def start_again(self) -> None:
        """Start the server (again, after `stop_now`) on the same port and data."""
        sync = "" if self.durable else "-c synchronous_commit=off "
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -F "
            f"-c full_page_writes=off {sync}-c max_connections=100 -c shared_buffers=16MB"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            opts,
            "-w",
            "-t",
            "60",
            "start",
        )
        self.started = True

    def stop_now(self) -> None:
        """Stop the server at once (`pg_ctl stop -m immediate`: like a crash), data kept."""
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"
        )
        self.started = False

    def url(self, dbname: str) -> str:
        auth = SUPERUSER if self.password is None else f"{SUPERUSER}:{self.password}"
        return f"postgresql+psycopg://{auth}@127.0.0.1:{self.port}/{dbname}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            password=self.password,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute(sql)

    def new_database(self) -> str:
        """A fresh empty database; returns its URL."""
        self._n += 1
        name = f"ra_test_{os.getpid()}_{self._n}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        try:
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception:
            pass  # the whole cluster goes at the end anyway

    def stop(self) -> None:
        try:
            if self.started:
                self._run(
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                    timeout=60,
                )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
