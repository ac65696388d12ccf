"""`ra experiment --launcher ray`: each job is a detached, named Ray actor (`pip install
'ra[ray]'`) that runs `worker.run` once and then exits. Detached, so that the command may
leave and re-attach by name; restarted by Ray when its worker process dies
(`ray.max_restarts`), the interrupted call retried, the run resumed from its checkpoint.
No scheduling of ra's own: Ray places the actors on nodes with the GPUs they ask for."""

from __future__ import annotations

import os

from racli.errors import BadInput
from racli.experiment import worker

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
    """One job of an experiment, run once; the actor ends itself afterwards."""

    def run(self, job: worker.WorkerJob) -> dict:
        out = worker.run(job)
        _ray().actor.exit_actor()
        return out

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
        self.refs: dict = {}
        self.errors: dict[str, str] = {}

    def submit(self, jobs: list[worker.WorkerJob], gpus: int, name: str) -> list[str]:
        """One detached actor per job, named after it; the names are the job ids."""
        names = []
        for job in jobs:
            actor = self.actor_class.options(
                name=job.name,
                namespace=NAMESPACE,
                lifetime="detached",
                num_cpus=float(self.cfg.cpus_per_job),
                num_gpus=gpus,
                max_restarts=int(self.cfg.max_restarts),
                max_task_retries=int(self.cfg.max_restarts),
                max_concurrency=2,  # pid() answers while run() works
            ).remote()
            self.refs[job.name] = actor.run.remote(job)
            names.append(job.name)
        return names

    def _actor(self, name: str):
        try:
            return self.ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return None

    def states(self, ids: list[str]) -> dict[str, str]:
        """RUNNING while the actor exists, ENDED once it is gone (its outcome is in the
        store), FAILED when its call raised."""
        out = {}
        for name in ids:
            ref = self.refs.get(name)
            if ref is not None:
                ready, _ = self.ray.wait([ref], timeout=0)
                if not ready:
                    out[name] = "RUNNING"
                    continue
                try:
                    self.ray.get(ref)
                    out[name] = "ENDED"
                except self.ray.exceptions.RayActorError:
                    out[name] = "ENDED"  # the actor ended itself (or died for good)
                except self.ray.exceptions.RayTaskError as exc:
                    out[name] = "FAILED"
                    self.errors[name] = str(exc).strip().splitlines()[-1]
                continue
            out[name] = "RUNNING" if self._actor(name) is not None else "ENDED"
        return out

    @staticmethod
    def ended(state: str) -> bool:
        return state in ("ENDED", "FAILED")

    def log_of(self, job_id: str) -> str:
        return self.errors.get(job_id, "the Ray worker's log")

    def cancel(self, ids: list[str]) -> None:
        for name in ids:
            actor = self._actor(name)
            if actor is not None:
                self.ray.kill(actor, no_restart=True)

    def close(self) -> None:
        if self.ray.is_initialized():
            self.ray.shutdown()
