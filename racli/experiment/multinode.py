"""A run over several nodes (`slurm.gpus_per_run` above `slurm.gpus_per_node`, or
`slurm.nodes_per_run` for CPU runs; the same settings under `ray.`): one `torchrun` agent
per node with its node's rank, each started and stopped by `run_node`. Under Ray the
placement group of racli/experiment/ray_nodes.py holds the nodes; under Slurm, below, the
run is one Slurm job of its own, one task per node.

Node 0's task is the run's worker (racli/experiment/worker.py): it claims the run in the
store, decides whether to resume it and records how it ended. Before each start of the
run it writes the launch (the `ra train` command line, the address and a free port of the
rendezvous on node 0) to `<folder>/<job id>.<restart count>/launch-<k>.json`, on the
filesystem every node sees; the tasks of the other nodes wait for each launch, start their
torchrun with it, and end once node 0 writes `end` (or when Slurm stops the job). So the
store hears from node 0 alone, and `ra train` under torchrun writes from global rank 0
alone. A requeued job is a new incarnation (SLURM_RESTART_COUNT): a fresh folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from racli.errors import BadInput
from racli.experiment import guard

GRACE_S = 60.0  # a node's torchrun still running this long after node 0 moved on is stopped


@dataclass(frozen=True)
class Rendezvous:
    """Where the torchrun agents of one run meet (node 0 hosts the store)."""

    nodes: int
    node_rank: int
    addr: str
    port: int


def child_command(argv: list[str], per_node: int, rdzv: Rendezvous | None = None) -> list[str]:
    """`python -m racli train ...` (`argv`) as it runs on one node: under torchrun for a run
    on several GPUs of one node (`--standalone`) or for a run over several nodes (`rdzv`:
    this node's rank, node 0's address and port); as is for a run on one device."""
    if rdzv is None:
        if per_node <= 1:
            return argv
        where = ["--standalone"]
    else:
        where = [
            f"--nnodes={rdzv.nodes}",
            f"--node-rank={rdzv.node_rank}",
            f"--master-addr={rdzv.addr}",
            f"--master-port={rdzv.port}",
        ]
    return [
        argv[0],
        "-m",
        "torch.distributed.run",
        *where,
        f"--nproc-per-node={per_node}",
        *argv[1:],
    ]


def run_nodes(cfg, cpu: bool, per_run: int, section: str = "slurm") -> int:
    """The nodes one run spans under `--launcher slurm|ray` (`cfg`: that launcher's section
    of ra.yaml, named `section`): `nodes_per_run` for CPU runs, gpus_per_run /
    gpus_per_node for a GPU run larger than one node (whole nodes), else 1."""
    if cpu:
        return int(cfg.nodes_per_run)
    if cfg.nodes_per_run != 1:
        raise BadInput(
            f"{section}.nodes_per_run {cfg.nodes_per_run} is for CPU runs (--device cpu); a GPU "
            f"run spans {section}.gpus_per_run / {section}.gpus_per_node nodes"
        )
    per_node = int(cfg.gpus_per_node)
    if per_run <= per_node:
        return 1
    if per_run % per_node:
        raise BadInput(
            f"{section}.gpus_per_run {per_run} is above {section}.gpus_per_node {per_node} and "
            f"not a multiple of it: a run over several nodes takes whole nodes "
            f"(e.g. gpus_per_run={per_node * -(-per_run // per_node)})"
        )
    return per_run // per_node


def processes_per_node(gpus_per_run: int, nodes: int) -> int:
    """torchrun processes on each node of a run: its GPUs there, one on the CPU."""
    return max(1, gpus_per_run // nodes)


# ---- this node ----------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    rank: int  # SLURM_NODEID: 0 for the first node of the job
    nodes: int
    job_id: str  # SLURM_JOB_ID (an array task's own id)
    restart: int  # SLURM_RESTART_COUNT: how often the job was requeued
    name: str  # this node's name in Slurm
    hosts: tuple[str, ...] = ()  # the names of the job's nodes, node 0 first


def this_node() -> Node:
    """The node this task runs on, as submitit's job environment reads Slurm's."""
    import submitit

    env = submitit.JobEnvironment()
    names = env.hostnames
    return Node(
        rank=env.node,
        nodes=env.num_nodes,
        job_id=env.raw_job_id,
        restart=int(os.environ.get("SLURM_RESTART_COUNT") or 0),
        name=os.environ.get("SLURMD_NODENAME") or names[env.node],
        hosts=tuple(names),
    )


def node_addr(scontrol_output: str, name: str) -> str:
    """The NodeAddr in `scontrol show node -o NAME`'s output, else the name itself."""
    for field in scontrol_output.split():
        key, _, value = field.partition("=")
        if key == "NodeAddr" and value:
            return value
    return name


def node_address(name: str) -> str:
    """Where the other nodes reach node `name`: the address Slurm itself uses for it."""
    try:
        res = subprocess.run(
            ["scontrol", "show", "node", "-o", name], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return name
    return node_addr(res.stdout, name)


def free_port() -> int:
    """A TCP port free on this node now (for the rendezvous node 0 hosts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


# ---- the launches, from node 0 to the others ------------------------------------------


@dataclass
class Launch:
    argv: list[str]  # python -m racli train ...
    per_node: int
    nodes: int
    addr: str
    port: int
    log: str  # node 0's log of the run; node r writes beside it (.node<r>.log)

    def rendezvous(self, rank: int) -> Rendezvous:
        return Rendezvous(self.nodes, rank, self.addr, self.port)

    def command(self, rank: int) -> list[str]:
        return child_command(self.argv, self.per_node, self.rendezvous(rank))

    def log_of(self, rank: int) -> Path:
        path = Path(self.log)
        return path if rank == 0 else path.with_name(f"{path.stem}.node{rank}{path.suffix}")


class Exchange:
    """The launches of one job incarnation, as files in a folder every node sees."""

    def __init__(self, root: Path, node: Node):
        self.root = root
        self.node = node
        self.folder = root / f"{node.job_id}.{node.restart}"
        self.count = 0

    def _write(self, name: str, text: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.folder / name)

    def publish(self, launch: Launch) -> None:
        """Node 0: the next start of the run."""
        self._write(f"launch-{self.count}.json", json.dumps(asdict(launch)))
        self.count += 1

    def end(self) -> None:
        """Node 0: no further start in this incarnation."""
        self._write("end", "")

    def forget_older(self) -> None:
        """Node 0: the folders of this job's earlier incarnations go."""
        for r in range(self.node.restart):
            shutil.rmtree(self.root / f"{self.node.job_id}.{r}", ignore_errors=True)

    def moved_on(self, k: int) -> bool:
        return (self.folder / "end").exists() or (self.folder / f"launch-{k + 1}.json").exists()

    def wait(self, k: int, stop: threading.Event, poll_s: float = 1.0) -> Launch | None:
        """The k-th launch once node 0 wrote it; None once it ended or on a stop request."""
        path = self.folder / f"launch-{k}.json"
        while not stop.is_set():
            if path.exists():
                return Launch(**json.loads(path.read_text()))
            if (self.folder / "end").exists():
                return None
            stop.wait(poll_s)
        return None


class SlurmNodes:
    """Node 0 of a run's Slurm job (racli/experiment/worker.py keeps the run's books): each
    start runs node 0's torchrun here, the launch handed to the other nodes' tasks."""

    here = True  # node 0's torchrun runs in this task's environment (its GPUs)

    def __init__(self, root: Path, node: Node):
        self.node = node
        self.exchange = Exchange(root, node)
        self.exchange.forget_older()
        self.addr = node_address(node.name)

    def hosts(self) -> list[str]:
        return list(self.node.hosts) or [self.node.name]

    def run(self, argv: list[str], per_node: int, log: str, out, env: dict[str, str]) -> int:
        """One start of the run (`argv`: its `ra train`): its launch published, node 0's
        torchrun to its end (its output to `out`); the exit code."""
        launch = Launch(argv, per_node, self.node.nodes, self.addr, free_port(), log)
        self.exchange.publish(launch)
        return guard.spawn(launch.command(0), out, env).wait()

    def end(self) -> None:
        self.exchange.end()


def follow(root: Path, node: Node, stop: threading.Event, *, poll_s: float = 1.0) -> dict:
    """A node other than 0: start this node's torchrun for each launch node 0 writes."""
    exchange = Exchange(root, node)
    k = 0
    while True:
        launch = exchange.wait(k, stop, poll_s)
        if launch is None:
            return {"node": node.rank, "launches": k, "interrupted": stop.is_set()}
        run_node(launch, node.rank, k, lambda k=k: stop.is_set() or exchange.moved_on(k), poll_s)
        k += 1


def run_node(
    launch: Launch,
    rank: int,
    k: int,
    moved_on: Callable[[], bool],
    poll_s: float = 1.0,
    cwd: str | None = None,
) -> int:
    """This node's torchrun of launch k (through the guard, in folder `cwd`, its output to
    the node's log), to its end; stopped (SIGTERM, then SIGKILL, to its process group) when
    it still runs GRACE_S after `moved_on()` first said that node 0 moved on (or a stop
    came)."""
    path = launch.log_of(rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(path, "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} node {rank}, launch {k} ===\n")
        log.flush()
        proc = guard.spawn(launch.command(rank), log, env, cwd=cwd)
        since, sent = None, None
        while proc.poll() is None:
            time.sleep(poll_s)
            now = time.monotonic()
            if since is None and moved_on():
                since = now
            if since is not None and now - since > GRACE_S:
                sig = signal.SIGTERM if sent is None else signal.SIGKILL
                if sent is None or now - sent > GRACE_S / 2:
                    _signal_group(proc.pid, sig)
                    sent = now
        return proc.returncode


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except OSError:
        pass
