"""Throwaway clusters for the tests: a single-host Slurm with accounting, and a local Ray.

`SlurmCluster.start()` brings up, in a fresh temporary directory and on 127.0.0.1 only:
munged (its own key and socket), MariaDB (no grant tables, its own socket and port),
slurmdbd, slurmctld and two slurmd daemons (logical nodes n1 and n2 of this host, each
with two fake GPUs: gres.conf maps them to /dev/tty*, enough for scheduling). Everything
runs as root, without systemd or cgroups (proctrack/linuxproc, task/none). `env()` is the
environment a client needs (SLURM_CONF); `stop()` ends every daemon and removes the
directory. Nothing system-wide is touched.

`RayCluster.start()` starts a one-node Ray cluster on 127.0.0.1 with its temporary files
under a fresh directory (`ray start --head`), so that drivers connect with its address;
`RayNodesCluster` one of two logical nodes on 127.0.0.1 (ray.cluster_utils.Cluster).

Debian packages: slurm-wlm, slurmdbd, munge, mariadb-server (.ci/run installs them); the
Python packages submitit and ray (`pip install -e '.[slurm,ray]'`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SLURM_BINARIES = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct")
# the daemons live in /usr/sbin, which a user's PATH may lack
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def _bin(name: str) -> str:
    return shutil.which(name, path=SEARCH_PATH) or name


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_slurm() -> list[str]:
    """The Slurm-side programs not found (empty: a cluster can be started)."""
    extra = ("mariadb-install-db",)
    return [b for b in SLURM_BINARIES + extra if shutil.which(b, path=SEARCH_PATH) is None]


def _wait(check, what: str, timeout: float = 30.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s\n{tail}")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class SlurmCluster:
    NODES = ("n1", "n2")
    GPUS_PER_NODE = 2
    CPUS_PER_NODE = 2

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="ra-slurm-"))
        os.chmod(self.root, 0o755)
        self.procs: list[subprocess.Popen] = []
        self.ports = {
            name: free_port() for name in ("db", "dbd", "ctld", *(f"d_{n}" for n in self.NODES))
        }
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.conf = self.root / "slurm.conf"

    # ---- pieces ----------------------------------------------------------------
    def _spawn(self, argv: list[str], log: str) -> subprocess.Popen:
        out = open(self.root / log, "ab")
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True
        )
        self.procs.append(proc)
        return proc

    def _munge(self) -> None:
        d = self.root / "munge"
        d.mkdir(mode=0o700)
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        subprocess.run(
            [
                _bin("munged"),
                "--force",
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={d / 'munged.pid'}",
                f"--log-file={d / 'munged.log'}",
                f"--seed-file={d / 'munged.seed'}",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.munged_pid = d / "munged.pid"
        _wait(self.munge_socket.exists, "munged", log=d / "munged.log")

    def _mariadb(self) -> None:
        data = self.root / "mysql"
        subprocess.run(
            [
                _bin("mariadb-install-db"),
                f"--datadir={data}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        self._spawn(
            [
                _bin("mariadbd"),
                "--no-defaults",
                f"--datadir={data}",
                "--user=root",
                "--skip-grant-tables",
                "--bind-address=127.0.0.1",
                f"--port={self.ports['db']}",
                f"--socket={self.root / 'mysql.sock'}",
                f"--pid-file={self.root / 'mysql.pid'}",
                "--innodb-buffer-pool-size=16M",
                "--innodb-log-file-size=8M",
                "--skip-log-bin",
            ],
            "mariadb.log",
        )
        _wait(lambda: _port_open(self.ports["db"]), "mariadbd", 60, self.root / "mariadb.log")

    def _write_configs(self) -> None:
        r = self.root
        (r / "state").mkdir()
        for n in self.NODES:
            (r / f"spool-{n}").mkdir()
        auth = f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket}\n"
        dbd = r / "slurmdbd.conf"
        dbd.write_text(
            auth
            + f"DbdHost=localhost\nDbdAddr=127.0.0.1\nDbdPort={self.ports['dbd']}\n"
            + "SlurmUser=root\nStorageType=accounting_storage/mysql\n"
            + f"StorageHost=127.0.0.1\nStoragePort={self.ports['db']}\n"
            + "StorageUser=slurm\nStoragePass=slurm\nStorageLoc=slurm_acct_db\n"
            + f"PidFile={r / 'slurmdbd.pid'}\nLogFile={r / 'slurmdbd.log'}\n"
        )
        os.chmod(dbd, 0o600)
        nodes = []
        gres = []
        for i, n in enumerate(self.NODES):
            nodes.append(
                f"NodeName={n} NodeHostname=localhost NodeAddr=127.0.0.1 "
                f"Port={self.ports['d_' + n]} CPUs={self.CPUS_PER_NODE} "
                f"Gres=gpu:{self.GPUS_PER_NODE} RealMemory=2000 State=UNKNOWN"
            )
            lo = i * self.GPUS_PER_NODE
            gres.append(f"NodeName={n} Name=gpu File=/dev/tty[{lo}-{lo + self.GPUS_PER_NODE - 1}]")
        (r / "gres.conf").write_text("\n".join(gres) + "\n")
        self.conf.write_text(
            "ClusterName=ra\nSlurmctldHost=localhost(127.0.0.1)\n"
            + auth
            + "CredType=cred/munge\nSlurmUser=root\nSlurmdUser=root\n"
            + f"SlurmctldPort={self.ports['ctld']}\n"
            + f"StateSaveLocation={r / 'state'}\nSlurmdSpoolDir={r / 'spool-%n'}\n"
            + f"SlurmctldPidFile={r / 'slurmctld.pid'}\nSlurmdPidFile={r / 'slurmd-%n.pid'}\n"
            + f"SlurmctldLogFile={r / 'slurmctld.log'}\nSlurmdLogFile={r / 'slurmd-%n.log'}\n"
            + "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
            + "JobAcctGatherType=jobacct_gather/none\nSelectType=select/cons_tres\n"
            + "SelectTypeParameters=CR_Core\nGresTypes=gpu\nMpiDefault=none\n"
            + "SlurmdParameters=config_overrides\nReturnToService=2\nJobRequeue=1\n"
            + "KillWait=10\nMinJobAge=600\nSchedulerParameters=sched_interval=2\n"
            + "AccountingStorageType=accounting_storage/slurmdbd\n"
            + f"AccountingStorageHost=127.0.0.1\nAccountingStoragePort={self.ports['dbd']}\n"
            + f"AccountingStoragePass={self.munge_socket}\n"
            + "JobCompType=jobcomp/none\n"
            + "\n".join(nodes)
            + f"\nPartitionName=debug Nodes={','.join(self.NODES)} Default=YES "
            + "MaxTime=INFINITE State=UP\n"
        )

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = SEARCH_PATH
        return env

    def run(self, *argv: str, timeout: float = 30) -> str:
        res = subprocess.run(
            list(argv), capture_output=True, text=True, env=self.env(), timeout=timeout
        )
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip() or res.stdout.strip()}")
        return res.stdout

    def _nodes_idle(self) -> bool:
        try:
            out = self.run("sinfo", "-h", "-N", "-o", "%N %t")
        except Exception:
            return False
        states = dict(line.split() for line in out.strip().splitlines() if line.strip())
        return all(states.get(n, "").startswith("idle") for n in self.NODES)

    def start(self) -> SlurmCluster:
        try:
            self._munge()
            self._mariadb()
            self._write_configs()
            self._spawn([_bin("slurmdbd"), "-D"], "dbd.out")
            _wait(lambda: _port_open(self.ports["dbd"]), "slurmdbd", 60, self.root / "slurmdbd.log")
            self._spawn([_bin("slurmctld"), "-D", "-i", "-f", str(self.conf)], "ctld.out")
            _wait(
                lambda: _port_open(self.ports["ctld"]), "slurmctld", 30, self.root / "slurmctld.log"
            )
            for n in self.NODES:
                self._spawn([_bin("slurmd"), "-D", "-N", n, "-f", str(self.conf)], f"d-{n}.out")
            _wait(self._nodes_idle, "slurmd nodes", 60, self.root / "slurmctld.log")
        except BaseException:
            self.stop()
            raise
        return self

    def logs(self) -> str:
        """The tails of every daemon's log (for a failing test's message)."""
        out = []
        for p in sorted(self.root.glob("*.log")):
            out.append(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}")
        return "\n".join(out)

    def _job_processes(self) -> list[int]:
        """Processes of this cluster's jobs (slurmstepd and what it started: their
        environment names this cluster's slurm.conf)."""
        mark = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and int(d.name) != os.getpid():
                try:
                    if mark in (d / "environ").read_bytes().split(b"\0"):
                        pids.append(int(d.name))
                except OSError:
                    continue
        return pids

    def stop(self) -> None:
        if self.procs:
            try:
                self.run("scancel", "--full", "--user=root", timeout=15)
                _wait(lambda: not self.run("squeue", "-h").strip(), "the jobs' end", 20)
            except Exception:
                pass
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for pid in self._job_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        pid = getattr(self, "munged_pid", None)
        if pid is not None and pid.exists():
            try:
                number = int(pid.read_text().strip())
                os.kill(number, signal.SIGTERM)
                # munged writes its seed file as it ends: wait, or the folder comes back
                _wait(lambda: not Path(f"/proc/{number}").exists(), "munged's end", 10)
            except (OSError, ValueError, RuntimeError):
                pass
        shutil.rmtree(self.root, ignore_errors=True)


class RayCluster:
    """`ray start --head` on 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray from
    swapping 127.0.0.1 for the machine's own address), token authentication off, its
    session files under a fresh directory. `stop()` ends the processes it started: those
    whose command line names that directory, and their children."""

    def __init__(self, num_cpus: int = 2):
        self.root = Path(tempfile.mkdtemp(prefix="ra-ray-", dir="/tmp"))
        (self.root / "ray").mkdir()
        self.port = free_port()
        self.num_cpus = num_cpus
        self.address = f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.variables())
        return env

    def variables(self) -> dict[str, str]:
        """What a driver of this cluster needs in its environment."""
        return {
            "RAY_ADDRESS": self.address,
            "RAY_TMPDIR": str(self.root),
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_AUTH_MODE": "disabled",
        }

    def start(self) -> RayCluster:
        ray = Path(sys.executable).with_name("ray")
        cmd = [str(ray)] if ray.exists() else [sys.executable, "-m", "ray.scripts.scripts"]
        res = subprocess.run(
            [
                *cmd,
                "start",
                "--head",
                f"--port={self.port}",
                "--node-ip-address=127.0.0.1",
                f"--num-cpus={self.num_cpus}",
                "--num-gpus=0",
                "--include-dashboard=false",
                f"--temp-dir={self.root / 'ray'}",
                "--disable-usage-stats",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            env=self.env(),
        )
        if res.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed: {(res.stderr or res.stdout)[-2000:]}")
        return self

    def _pids(self) -> list[int]:
        """The processes of this cluster: command lines naming its directory, and children."""
        mine: set[int] = set()
        parents: dict[int, int] = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents[int(d.name)] = ppid
            # its directory, or its address (Ray's client server names only the address)
            if str(self.root) in cmdline or f"--address={self.address} " in cmdline + " ":
                mine.add(int(d.name))
        grew = True
        while grew:
            grew = False
            for pid, ppid in parents.items():
                if ppid in mine and pid not in mine:
                    mine.add(pid)
                    grew = True
        mine.discard(os.getpid())
        return sorted(mine)

    def stop(self) -> None:
        # SIGTERM, then SIGKILL for what is left: the GCS server and the autoscaler's
        # monitor never end on SIGTERM, the raylet only after 10 s; nothing of a throwaway
        # cluster needs more grace than that
        for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 10.0)):
            pids = self._pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.monotonic() + grace
            while pids and time.monotonic() < deadline and self._pids():
                time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)


class RayNodesCluster(RayCluster):
    """A Ray cluster of two logical nodes on 127.0.0.1 (ray.cluster_utils.Cluster: a head
    and one more node, `cpus` CPUs each), token authentication off, its session files
    under a fresh directory. The nodes' processes are started from this process, with
    this environment and the driver's variables; `stop()` shuts them down, then ends
    whatever of the cluster is left (RayCluster.stop)."""

    NODES = 2

    def __init__(self, cpus: int = 2):
        super().__init__(num_cpus=cpus)
        self.cluster = None

    @contextlib.contextmanager
    def _environment(self):
        """The cluster's variables in this process's environment (the nodes' processes
        inherit them; Ray writes and removes its address file under RAY_TMPDIR)."""
        saved = {k: os.environ.get(k) for k in self.variables()}
        os.environ.update({k: v for k, v in self.variables().items() if k != "RAY_ADDRESS"})
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def start(self) -> RayNodesCluster:
        from ray.cluster_utils import Cluster

        args = {
            "num_cpus": self.num_cpus,
            "num_gpus": 0,
            "node_ip_address": "127.0.0.1",
            "include_dashboard": False,
        }
        try:
            with self._environment():
                self.cluster = Cluster(
                    initialize_head=True,
                    connect=False,
                    head_node_args={
                        **args,
                        "temp_dir": str(self.root / "ray"),
                        "ray_client_server_port": free_port(),  # not the shared default 10001
                    },
                )
                for _ in range(self.NODES - 1):
                    self.cluster.add_node(**args)
                self.cluster.wait_for_nodes()
            self.address = self.cluster.address
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.cluster is not None:
            with self._environment(), contextlib.suppress(Exception):
                self.cluster.shutdown()
            self.cluster = None
        super().stop()
