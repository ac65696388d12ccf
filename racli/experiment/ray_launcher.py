"""`ra experiment --launcher ray`: each job is a detached, named Ray actor (`pip install
'ra[ray]'`) that runs `worker.run` once and then ends itself. Detached, so that the command
may leave and re-attach by name; restarted by Ray when its worker process dies
(`ray.max_restarts`), the work taken up again and the run resumed from its checkpoint.
No scheduling of ra's own: Ray places the actors on nodes with the GPUs they ask for, and
the nodes of a run larger than one node through a placement group
(racli/experiment/ray_nodes.py)."""

from __future__ import annotations

import os
import threading

from racli.errors import BadInput
from racli.experiment import ray_nodes, worker
from racli.experiment.text import last_error_line

NAMESPACE = "ra"


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise BadInput(
            "--launcher ray needs ray: pip install 'ra[ray]' (or pip install ray)"
        ) from exc
    return ray


class JobActor:
    """One job of an experiment. The work starts in the constructor, in a thread, so that
    Ray's restart of the actor after its worker died (which runs the constructor again)
    takes the work up again without its caller: the command that created the actor may
    be gone. When the work ends the actor kills itself for good, freeing its GPUs. A run
    over several nodes (`need`: one node's bundle) starts on the nodes of a placement
    group of its own (ray_nodes.RayNodes)."""

    def __init__(self, job: worker.WorkerJob, need: dict[str, float] | None = None):
        self.job, self.need = job, need
        self.thread = threading.Thread(target=self._work, name="ra-job", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        try:
            nodes = None
            if self.need is not None:
                nodes = ray_nodes.RayNodes(_ray(), self.job.nodes, self.need)
            worker.run(self.job, nodes)
        except BaseException as exc:  # noqa: BLE001 - the store is where the driver looks
            worker.record_failure(self.job, f"{type(exc).__name__}: {exc}")
        finally:
            ray = _ray()
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    def pid(self) -> int:
        return os.getpid()


class RayLauncher:
    name = "ray"

    def __init__(self, rcfg):
        self.ray = _ray()
        self.cfg = rcfg
        self.poll_s = float(rcfg.poll_s)
        address = rcfg.address if rcfg.address != "auto" else os.environ.get("RAY_ADDRESS")
        if not self.ray.is_initialized():
            self.ray.init(
                address=address or "auto",
                namespace=NAMESPACE,
                log_to_driver=False,
                configure_logging=False,
            )
        self.actor_class = self.ray.remote(JobActor)
        self.handles: dict[str, object] = {}  # job id -> actor handle, kept for why_ended

    def check_fits(self, per_run: int, nodes: int, arms: int = 1) -> None:
        """Refuse (one line) a job the live nodes of the cluster cannot hold."""
        alive = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        ray_nodes.check_fits(alive, per_run, nodes, float(self.cfg.cpus_per_job), arms)

    def submit(
        self, jobs: list[worker.WorkerJob], gpus: int, name: str, nodes: int = 1
    ) -> list[str]:
        """One detached actor per job, named after it; the names are the job ids. A job on
        `nodes` nodes asks for nothing itself: each of its runs' starts takes a placement
        group bundle of `gpus` GPUs (or CPUs only) a node."""
        cpus = float(self.cfg.cpus_per_job)
        need = ray_nodes.bundle(gpus, cpus) if nodes > 1 else None
        for job in jobs:
            self.handles[job.name] = self.actor_class.options(
                name=job.name,
                namespace=NAMESPACE,
                lifetime="detached",
                num_cpus=0 if need else cpus,
                num_gpus=0 if need else gpus,
                max_restarts=int(self.cfg.max_restarts),
            ).remote(job, need)
        return [job.name for job in jobs]

    def _actor(self, name: str):
        try:
            handle = self.ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return None
        self.handles[name] = handle
        return handle

    def states(self, ids: list[str]) -> dict[str, str]:
        """RUNNING while the actor exists (restarting included), ENDED once it is gone:
        its outcome is in the store."""
        return {name: "RUNNING" if self._actor(name) is not None else "ENDED" for name in ids}

    @staticmethod
    def ended(state: str) -> bool:
        return state == "ENDED"

    def why_ended(self, job_id: str, state: str) -> str | None:
        """Why an actor this command saw is gone, from Ray's error for a call on it (its
        constructor's error, e.g. ra not importable on the node, or how its worker died)."""
        handle = self.handles.get(job_id)
        if handle is None:
            return None
        try:
            self.ray.get(handle.pid.remote(), timeout=30)
        except self.ray.exceptions.RayActorError as exc:
            return last_error_line(str(exc))
        except Exception:  # noqa: BLE001 - no reason to give beats a second failure
            return None
        return None

    def log_of(self, job_id: str) -> str:
        return f"the Ray worker logs of actor {job_id} (namespace {NAMESPACE})"

    def cancel(self, ids: list[str]) -> None:
        for name in ids:
            actor = self._actor(name)
            if actor is not None:
                self.ray.kill(actor, no_restart=True)

    def close(self) -> None:
        if self.ray.is_initialized():
            self.ray.shutdown()
