"""A run over several nodes under `--launcher ray` (`ray.gpus_per_run` above
`ray.gpus_per_node`, or `ray.nodes_per_run` for CPU runs), placed by Ray itself.

The run's job is a detached actor like a seed's (racli/experiment/ray_launcher.py); it
keeps the run's books (racli/experiment/worker.py) and asks for no resources of its own.
At the run's first start it makes a placement group of one bundle per node (the node's
GPUs, or its CPUs), strategy STRICT_SPREAD: every bundle on another node. For each start
one `NodeActor` per bundle runs that node's torchrun (`multinode.run_node`, as under
Slurm); the node-0 bundle's actor gives its node's address and a port free there, the
rendezvous. A node whose torchrun still runs after node 0's ended is stopped with
SIGTERM, then SIGKILL (Ray blocks SIGINT in its workers).

The group and the node actors belong to the job actor's worker process: Ray removes them
when that process dies. A killed worker's node actors die with it (Ray kills their child
processes, the guards; each torchrun then gets one SIGTERM, racli/experiment/guard.py,
and the run stops with its checkpoint); the job actor, restarted by Ray
(`ray.max_restarts`), makes a fresh group and resumes the run; once the job ends, the
actor kills itself for good and the group goes with it.
"""

from __future__ import annotations

import os
import threading

from racli.errors import BadInput
from racli.experiment import multinode

STRATEGY = "STRICT_SPREAD"  # every bundle of a run's placement group on another node


def bundle(gpus: int, cpus: float) -> dict[str, float]:
    """One node's bundle of a run's placement group: its `gpus` GPUs (0: a CPU run) and
    `ray.cpus_per_job` CPUs."""
    out = {"CPU": float(cpus)} if cpus > 0 else {}
    if gpus:
        out["GPU"] = float(gpus)
    if not out:
        raise BadInput(
            "ray.cpus_per_job is 0: a CPU run over several nodes asks each node for CPUs "
            "(e.g. --set ray.cpus_per_job=1)"
        )
    return out


def check_fits(
    alive: list[dict[str, float]], per_run: int, nodes: int, cpus: float, arms: int = 1
) -> None:
    """Refuse (one line) what the live nodes of the cluster (`alive`: their resources)
    cannot hold: a one-node seed job (its `arms` runs side by side, `per_run` GPUs each)
    above the largest node's GPUs, or a run over `nodes` nodes when fewer nodes than that
    hold its bundle (its placement group would wait for ever)."""
    largest = int(max((r.get("GPU", 0) for r in alive), default=0))
    if nodes == 1:
        if per_run and largest and per_run > largest:
            raise BadInput(
                f"ray.gpus_per_run {per_run} is above the {largest} GPUs of this Ray cluster's "
                f"largest node: set ray.gpus_per_node={largest} and a run spans whole nodes"
            )
        if per_run and largest and per_run * arms > largest:
            raise BadInput(
                f"a seed's job runs its {arms} arms side by side on one node: {arms} x "
                f"ray.gpus_per_run {per_run} = {per_run * arms} GPUs, above the {largest} of "
                f"this Ray cluster's largest node (lower ray.gpus_per_run, or set "
                f"ray.gpus_per_node={largest} and a run spans whole nodes)"
            )
        return
    need = bundle(per_run // nodes, cpus)
    fit = sum(all(r.get(k, 0) >= v for k, v in need.items()) for r in alive)
    if fit < nodes:
        what = " and ".join(f"{v:g} {k}" for k, v in need.items())
        raise BadInput(
            f"a run over {nodes} nodes needs {nodes} Ray nodes with {what} each (one "
            f"placement group bundle a node, STRICT_SPREAD); this cluster has {fit} alive"
        )


class NodeActor:
    """One node of one start of a run, in its bundle of the run's placement group."""

    def __init__(self):
        self.done = threading.Event()

    def rendezvous(self) -> tuple[str, int]:
        """This node's address and a port free on it now."""
        import ray

        return ray.util.get_node_ip_address(), multinode.free_port()

    def run(self, launch: multinode.Launch, rank: int, k: int, cwd: str) -> int:
        """This node's torchrun of launch k, in the job's folder (checkpoints, logs)."""
        return multinode.run_node(launch, rank, k, self.done.is_set, cwd=cwd)

    def moved_on(self) -> None:
        """Node 0's torchrun ended: this node's is stopped if it still runs GRACE_S on."""
        self.done.set()


class RayNodes:
    """The nodes of one run, for worker.run: a placement group, made on first use, and
    for each start one NodeActor per bundle. `ray`: the ray module."""

    here = False  # node 0's torchrun runs in its bundle's actor, not in the job's

    def __init__(self, ray, nodes: int, need: dict[str, float]):
        self.ray, self.nodes, self.need = ray, nodes, need
        self.node_class = ray.remote(NodeActor)
        self.group = None
        self.count = 0  # starts so far (the k of each node's log header)

    def _group(self):
        if self.group is None:
            bundles = [dict(self.need) for _ in range(self.nodes)]
            group = self.ray.util.placement_group(bundles, strategy=STRATEGY)
            self.ray.get(group.ready())
            self.group = group
        return self.group

    def hosts(self) -> list[str]:
        """The host names of the run's nodes, node 0 first (the group's bundles)."""
        where = self.ray.util.placement_group_table(self._group())["bundles_to_node_id"]
        names = {n["NodeID"]: n.get("NodeManagerHostname", "") for n in self.ray.nodes()}
        return [names.get(where[k], "") or where[k] for k in range(self.nodes)]

    def run(self, argv: list[str], per_node: int, log: str, out, env) -> int:
        """One start of the run on every node (`argv`: its `ra train`); node 0's exit code.
        Every node's output goes to its own log (node 0: `log`); `out` is that log, open
        here for a line when node 0's actor fails; `env` is not used (Ray gives each node
        actor the environment of its bundle)."""
        group = self._group()
        place = self.ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy
        actors = [
            self.node_class.options(
                scheduling_strategy=place(group, placement_group_bundle_index=k),
                num_cpus=self.need.get("CPU", 0),
                num_gpus=self.need.get("GPU", 0),
                max_concurrency=2,  # moved_on() while run() runs
            ).remote()
            for k in range(self.nodes)
        ]
        k, self.count = self.count, self.count + 1
        try:
            addr, port = self.ray.get(actors[0].rendezvous.remote())
            launch = multinode.Launch(argv, per_node, self.nodes, addr, port, log)
            cwd = os.getcwd()
            refs = [a.run.remote(launch, rank, k, cwd) for rank, a in enumerate(actors)]
            return self._wait(actors, refs, out)
        finally:
            for actor in actors:
                self.ray.kill(actor)

    def _wait(self, actors, refs, out) -> int:
        """Node 0's exit code once its torchrun ended; then the other nodes told, and
        waited for while they stop theirs (multinode.run_node's grace)."""
        try:
            rc = int(self.ray.get(refs[0]))
        except self.ray.exceptions.RayError as exc:
            out.write(f"node 0's actor failed: {type(exc).__name__}: {exc}\n")
            out.flush()
            rc = 1
        for actor in actors[1:]:
            actor.moved_on.remote()
        self.ray.wait(refs[1:], num_returns=len(refs) - 1, timeout=2 * multinode.GRACE_S)
        return rc

    def end(self) -> None:
        """No further start: the group goes (else it goes with this worker process)."""
        if self.group is not None:
            self.ray.util.remove_placement_group(self.group)
            self.group = None
