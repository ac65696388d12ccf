"""`python -m racli.experiment.guard ARGV...`: run ARGV (an `ra train`) and give it exactly
one SIGTERM when the process that started the guard dies.

A Slurm job's or Ray actor's worker starts its runs through this guard. When the worker
is killed (SIGKILL: a dead Ray worker, an OOM kill), the run must stop gracefully, with
its final evaluation and a checkpoint, so that the restarted job resumes it. Linux tells
the guard through PR_SET_PDEATHSIG, and may tell it more than once (measured under Ray:
two or three signals); `ra train` reads a second SIGTERM as "stop at once, no
checkpoint", so the guard passes on one. SIGTERM and SIGINT sent to the guard itself are
ignored: a scheduler that signals the job signals the run directly. The guard itself
killed (SIGKILL: Ray ending an actor, on `ray.kill` or when the actor that made it died,
first kills the actor's child processes) gives the run one SIGTERM too (the run's own
PR_SET_PDEATHSIG), so it stops with its checkpoint instead of running on as an orphan.
The guard's exit code is the run's. Standard library only (no torch, no database)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1
MODULE = "racli.experiment.guard"


def spawn(argv: list[str], log, env: dict[str, str], cwd: str | None = None) -> subprocess.Popen:
    """Start ARGV through the guard (in folder `cwd`, default this one), its output to the
    open file `log`, in a session of its own (a killed worker's process group is not the
    run's)."""
    return subprocess.Popen(
        [sys.executable, "-m", MODULE, *argv],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m racli.experiment.guard ARGV...", file=sys.stderr)
        return 2
    parent = os.getppid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGUSR1)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR1])
    child = subprocess.Popen(argv, preexec_fn=_default_signals)
    sent = False

    def parent_died(signum=None, frame=None) -> None:
        nonlocal sent
        if not sent:
            sent = True
            with contextlib.suppress(OSError):
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGUSR1, parent_died)
    if os.getppid() != parent:  # it died before the signal was set up
        parent_died()
    while True:
        try:
            rc = child.wait()
            break
        except InterruptedError:
            continue
    return rc if rc >= 0 else 128 - rc


def _default_signals() -> None:
    """In the run: SIGTERM and SIGINT back to their defaults (ra train sets its own), and
    one SIGTERM when the guard dies."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT, signal.SIGTERM])
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
