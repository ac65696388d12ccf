"""A run over several nodes under `--launcher ray`, without a Ray cluster: the nodes a run
spans and the bundle of each (`ray.nodes_per_run`, `ray.gpus_per_node`), what the live
nodes of a cluster can hold, and the starts of a run through a stand-in for the `ray`
module: a placement group of one bundle per node (STRICT_SPREAD), one node actor per
bundle, each starting its node's torchrun at the rendezvous node 0's actor gave."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import types
from concurrent.futures import Future

import pytest

from racli.errors import BadInput
from racli.experiment import multinode, ray_nodes


def _cfg(**kw):
    return types.SimpleNamespace(**{"gpus_per_node": 8, "nodes_per_run": 1, **kw})


def test_the_ray_settings_spread_a_run_over_nodes_as_slurm_does():
    assert multinode.run_nodes(_cfg(nodes_per_run=2), cpu=True, per_run=0, section="ray") == 2
    assert multinode.run_nodes(_cfg(gpus_per_node=4), cpu=False, per_run=8, section="ray") == 2
    assert multinode.run_nodes(_cfg(), cpu=False, per_run=8, section="ray") == 1
    with pytest.raises(BadInput, match=r"^ray\.nodes_per_run 2 is for CPU runs.*ray\.gpus_per"):
        multinode.run_nodes(_cfg(nodes_per_run=2), cpu=False, per_run=1, section="ray")
    with pytest.raises(BadInput, match=r"^ray\.gpus_per_run 12 is above ray\.gpus_per_node 8"):
        multinode.run_nodes(_cfg(), cpu=False, per_run=12, section="ray")
    # a node's bundle: its GPUs and ray.cpus_per_job CPUs; a CPU run needs CPUs
    assert ray_nodes.bundle(0, 1.0) == {"CPU": 1.0}
    assert ray_nodes.bundle(8, 4.0) == {"CPU": 4.0, "GPU": 8.0}
    assert ray_nodes.bundle(8, 0.0) == {"GPU": 8.0}
    with pytest.raises(BadInput, match="ray.cpus_per_job is 0"):
        ray_nodes.bundle(0, 0.0)


def test_a_run_the_live_nodes_cannot_hold_is_refused_with_one_line():
    gpu8 = {"GPU": 8.0, "CPU": 64.0}
    alive = [gpu8, gpu8, {"CPU": 8.0}]
    ray_nodes.check_fits(alive, 8, 1, 1.0)  # one node of 8 GPUs
    ray_nodes.check_fits(alive, 16, 2, 1.0)  # two nodes of 8 GPUs
    ray_nodes.check_fits(alive, 0, 3, 1.0)  # a CPU run over the three nodes
    with pytest.raises(BadInput, match="above the 8 GPUs.*ray.gpus_per_node=8"):
        ray_nodes.check_fits(alive, 16, 1, 1.0)  # gpus_per_node left above the nodes' GPUs
    with pytest.raises(BadInput, match="needs 3 Ray nodes with 1 CPU and 8 GPU each.*has 2"):
        ray_nodes.check_fits(alive, 24, 3, 1.0)
    with pytest.raises(BadInput, match="needs 4 Ray nodes with 1 CPU each.*has 3"):
        ray_nodes.check_fits(alive, 0, 4, 1.0)
    with pytest.raises(BadInput, match="with 16 CPU each.*has 2"):
        ray_nodes.check_fits(alive, 0, 3, 16.0)
    ray_nodes.check_fits([{"CPU": 2.0}], 4, 1, 1.0)  # no GPU anywhere (yet): not judged here
    # a one-node seed job holds its arms side by side: 2 arms x 4 GPUs fit a node of 8,
    # 3 arms x 4 do not (its actor would wait for ever)
    ray_nodes.check_fits(alive, 4, 1, 1.0, arms=2)
    with pytest.raises(BadInput, match=r"^a seed's job runs its 3 arms .* 12 GPUs, above the 8"):
        ray_nodes.check_fits(alive, 4, 1, 1.0, arms=3)
    ray_nodes.check_fits(alive, 16, 2, 1.0, arms=3)  # runs over nodes: one job per run


def test_the_launcher_asks_the_clusters_live_nodes():
    from racli.experiment.ray_launcher import RayLauncher

    launcher = object.__new__(RayLauncher)
    launcher.cfg = types.SimpleNamespace(cpus_per_job=1.0)
    launcher.ray = types.SimpleNamespace(
        nodes=lambda: [
            {"Alive": True, "Resources": {"GPU": 8.0, "CPU": 64.0}},
            {"Alive": False, "Resources": {"GPU": 8.0, "CPU": 64.0}},
        ]
    )
    launcher.check_fits(8, 1)
    with pytest.raises(BadInput, match="runs its 2 arms side by side"):
        launcher.check_fits(8, 1, 2)
    with pytest.raises(BadInput, match="needs 2 Ray nodes.*has 1 alive"):
        launcher.check_fits(16, 2)  # the dead node does not count


class _Ref(Future):
    pass


class _Method:
    def __init__(self, actor, name):
        self.actor, self.name = actor, name

    def remote(self, *args):
        ref = _Ref()
        fn = getattr(self.actor.instance, self.name)

        def call():
            try:
                ref.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to get()
                ref.set_exception(exc)

        threading.Thread(target=call, daemon=True).start()
        return ref


class _Actor:
    def __init__(self, instance, options):
        self.instance, self.options = instance, options

    def __getattr__(self, name):
        return _Method(self, name)


class FakeRay:
    """What RayNodes uses of the `ray` module: actors run here, in threads."""

    def __init__(self):
        self.groups: list[tuple[list[dict], str]] = []
        self.actors: list[_Actor] = []
        self.killed: list[_Actor] = []
        self.removed: list[int] = []
        self.exceptions = types.SimpleNamespace(RayError=RuntimeError)
        strategies = types.SimpleNamespace(
            PlacementGroupSchedulingStrategy=lambda group, placement_group_bundle_index: (
                group,
                placement_group_bundle_index,
            )
        )
        self.util = types.SimpleNamespace(
            placement_group=self._placement_group,
            placement_group_table=lambda group: {"bundles_to_node_id": {0: "n-a", 1: "n-b"}},
            remove_placement_group=self.removed.append,
            scheduling_strategies=strategies,
            get_node_ip_address=lambda: "10.0.0.7",
        )

    def _placement_group(self, bundles, strategy):
        self.groups.append((bundles, strategy))
        ready = _Ref()
        ready.set_result(True)
        return types.SimpleNamespace(ready=lambda: ready)

    def nodes(self):
        return [
            {"NodeID": "n-a", "NodeManagerHostname": "host-a"},
            {"NodeID": "n-b", "NodeManagerHostname": "host-b"},
        ]

    def remote(self, cls):
        fake = self

        class Options:
            def options(self, **kw):
                return types.SimpleNamespace(remote=lambda: fake._made(cls(), kw))

        return Options()

    def _made(self, instance, options):
        actor = _Actor(instance, options)
        self.actors.append(actor)
        return actor

    def get(self, ref):
        return ref.result(timeout=30)

    def wait(self, refs, num_returns, timeout):
        for ref in refs:
            ref.result(timeout=timeout)

    def kill(self, actor):
        self.killed.append(actor)


def test_each_start_of_a_run_takes_one_node_actor_per_bundle(tmp_path, monkeypatch):
    started: list[tuple[list[str], str | None]] = []

    def spawn(argv, out, env, cwd=None):
        started.append((argv, cwd))
        return subprocess.Popen([sys.executable, "-c", "pass"], stdout=out)

    monkeypatch.setattr(multinode.guard, "spawn", spawn)
    monkeypatch.setattr(multinode, "free_port", lambda: 29555)
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)  # what the actors import, with or without ray
    nodes = ray_nodes.RayNodes(fake, 2, {"CPU": 1.0})
    log = tmp_path / "logs" / "ra_v5-seed3.log"
    assert nodes.hosts() == ["host-a", "host-b"]  # node 0 first, as the bundles lie
    assert fake.groups == [([{"CPU": 1.0}, {"CPU": 1.0}], "STRICT_SPREAD")]
    with open(tmp_path / "run.log", "a") as out:
        for tail in (["--attn", "ra_v5"], ["--resume", "7"]):
            argv = ["py", "-m", "racli", "train", *tail]
            assert nodes.run(argv, 1, str(log), out, {}) == 0
    assert len(fake.groups) == 1  # one group for every start of this job
    # one actor per bundle and start, each asking for its bundle, all gone after the start
    assert [a.options["scheduling_strategy"][1] for a in fake.actors] == [0, 1, 0, 1]
    assert {(a.options["num_cpus"], a.options["num_gpus"]) for a in fake.actors} == {(1.0, 0)}
    assert fake.killed == fake.actors
    # each node's torchrun: its rank, node 0's address and port, in the job's folder
    addr = next(a[5] for a, _ in started if a[4] == "--node-rank=0")
    assert addr == "--master-addr=10.0.0.7"
    heads = sorted((argv[3:7], cwd) for argv, cwd in started)
    assert heads == [
        (["--nnodes=2", f"--node-rank={rank}", addr, "--master-port=29555"], os.getcwd())
        for rank in (0, 0, 1, 1)
    ]
    assert sorted(a[-2] for a, _ in started) == ["--attn", "--attn", "--resume", "--resume"]
    text = (tmp_path / "logs" / "ra_v5-seed3.node1.log").read_text()
    assert "node 1, launch 0" in text and "node 1, launch 1" in text
    assert "node 0, launch 1" in log.read_text()  # node 0 writes to the run's log
    group = nodes.group
    nodes.end()
    assert fake.removed == [group] and nodes.group is None


def test_a_guard_killed_with_its_worker_gives_the_run_one_sigterm(tmp_path):
    """Ray ending an actor (ray.kill, its owner's death) first kills the actor's child
    processes, the guard among them (SIGKILL): the run still gets one SIGTERM."""
    import signal
    import time

    from racli.experiment import guard

    mark = tmp_path / "signals"
    script = (
        "import signal, sys, time\n"
        f"def on(s, f): open({str(mark)!r}, 'a').write('TERM\\n')\n"
        "signal.signal(signal.SIGTERM, on)\n"
        "print('ready', flush=True)\n"
        "time.sleep(3)\n"
    )
    with open(tmp_path / "out.log", "w") as out:
        proc = guard.spawn([sys.executable, "-c", script], out, dict(os.environ))
        deadline = time.monotonic() + 30
        while "ready" not in (tmp_path / "out.log").read_text():
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        while not mark.exists():
            assert time.monotonic() < deadline, "the run got no SIGTERM"
            time.sleep(0.05)
    time.sleep(0.5)
    assert mark.read_text() == "TERM\n"
