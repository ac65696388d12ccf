"""`ra experiment --launcher slurm`: the jobs submitted with submitit (`pip install
'ra[slurm]'`), their states read through submitit (sacct: the cluster's accounting must
be on), cancelled with scancel. No scheduling of ra's own: Slurm queues, runs, requeues."""

from __future__ import annotations

from pathlib import Path

from racli.errors import BadInput
from racli.experiment import worker
from racli.experiment.text import last_error_line

#: states after which a Slurm job does nothing more (a requeued job goes back to PENDING)
ENDED = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
    "SPECIAL_EXIT",
)


def _submitit():
    try:
        import submitit
    except ImportError as exc:
        raise BadInput(
            "--launcher slurm needs submitit: pip install 'ra[slurm]' (or pip install submitit)"
        ) from exc
    return submitit


def sbatch_options(lines: list[str]) -> dict:
    """`extra_sbatch` items (`--qos=high`, `--exclusive`) as submitit's additional_parameters."""
    out: dict = {}
    for item in lines:
        text = item.strip()
        if not text.startswith("--") or len(text) < 3:
            raise BadInput(f"slurm.extra_sbatch: expected --option[=value], got '{item}'")
        name, eq, value = text[2:].partition("=")
        out[name.replace("-", "_")] = value if eq else True
    return out


class SlurmLauncher:
    name = "slurm"

    def __init__(self, scfg, folder: Path):
        self.cfg = scfg
        self.folder = folder
        self.submitit = _submitit()
        self.poll_s = float(scfg.poll_s)

    def _executor(self, gpus: int, name: str, nodes: int = 1):
        ex = self.submitit.SlurmExecutor(folder=str(self.folder), max_num_timeout=0)
        params: dict = {
            "job_name": name,
            "time": int(self.cfg.time_limit_min),
            "cpus_per_task": int(self.cfg.cpus_per_task),
            "array_parallelism": int(self.cfg.array_parallelism),
            "additional_parameters": {"requeue": True, **sbatch_options(self.cfg.extra_sbatch)},
        }
        if self.cfg.partition:
            params["partition"] = self.cfg.partition
        if self.cfg.account:
            params["account"] = self.cfg.account
        if gpus:
            params["gpus_per_node"] = gpus
        if nodes > 1:  # a run over several nodes: one task per node; one failing ends them all
            params.update(nodes=nodes, ntasks_per_node=1, srun_args=["--kill-on-bad-exit=1"])
        ex.update_parameters(**params)
        return ex

    def submit(
        self, jobs: list[worker.WorkerJob], gpus: int, name: str, nodes: int = 1
    ) -> list[str]:
        """One sbatch job per WorkerJob (an array when several, in the given order) on
        `nodes` nodes with `gpus` GPUs each; their Slurm job ids."""
        ex = self._executor(gpus, name, nodes)
        if len(jobs) == 1:
            return [ex.submit(worker.run, jobs[0]).job_id]
        with ex.batch():
            handles = [ex.submit(worker.run, j) for j in jobs]
        return [h.job_id for h in handles]

    def _job(self, job_id: str):
        return self.submitit.SlurmJob(folder=str(self.folder), job_id=job_id)

    def states(self, ids: list[str]) -> dict[str, str]:
        """Slurm's state of each job (UNKNOWN until sacct knows it)."""
        jobs = {i: self._job(i) for i in ids}
        return {i: str(j.state).split()[0] for i, j in jobs.items()}

    @staticmethod
    def ended(state: str) -> bool:
        return state.upper() in ENDED

    def why_ended(self, job_id: str, state: str) -> str | None:
        """Slurm's end state unless COMPLETED (TIMEOUT, OUT_OF_MEMORY, ...), and the
        exception the job's stderr names, if any."""
        try:
            log = Path(self._job(job_id).paths.stderr).read_text(errors="replace")[-20000:]
        except OSError:
            log = ""
        parts = [f"slurm state {state}"] if state.upper() != "COMPLETED" else []
        raised = last_error_line(log, strict=True)
        return "; ".join(parts + ([raised] if raised else [])) or None

    def log_of(self, job_id: str) -> str:
        return str(self._job(job_id).paths.stdout)

    def cancel(self, ids: list[str]) -> None:
        for i in ids:
            self._job(i).cancel(check=False)

    def close(self) -> None:
        pass
