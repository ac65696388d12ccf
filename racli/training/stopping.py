"""How `ra train` and `ra experiment` stop on SIGINT / SIGTERM: gracefully, then at once."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence

EXIT_INTERRUPTED = 130  # the exit code of a stopped command (a run stopped, to be continued)
# set by `ra experiment` in the environment of its `ra train` children: the parent's pid
PARENT_ENV = "RA_PARENT_PID"
# under torchrun the agent passes on the signal its workers got already (a scheduler and a
# terminal signal every process): a second signal this soon after the first is that one
TORCHRUN_ECHO_S = 2.0


@contextlib.contextmanager
def stop_on_signals(
    stop: threading.Event, children: Sequence = (), echo_s: float | None = None
) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM set `stop` and send one SIGINT to each process in
    `children` (read at each signal, so the caller may add and remove its child processes).

    The first signal asks for a graceful stop: the caller's runs end after their final
    evaluation and a checkpoint. A second one is passed on again (children stop at once)
    and, once no child process is left, raises KeyboardInterrupt here. A signal within
    `echo_s` of the first counts as that one (default: TORCHRUN_ECHO_S under torchrun, else
    0). Outside the main thread nothing is installed."""
    if echo_s is None:
        echo_s = TORCHRUN_ECHO_S if os.environ.get("TORCHELASTIC_RUN_ID") else 0.0
    count, first = 0, 0.0

    def handler(signum, frame):
        nonlocal count, first
        now = time.monotonic()
        if count == 1 and now - first < echo_s:
            return
        count += 1
        if count == 1:
            first = now
        stop.set()
        for proc in list(children):
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGINT)
        if count > 1 and not children:
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def stop_when_parent_dies(stop: threading.Event, on_stop=None, every_s: float = 0.25) -> None:
    """In a child of `ra experiment` (PARENT_ENV set): once that process is gone (killed
    outright, so it could not pass a signal on), set `stop`, as a first Ctrl-C would: the run
    ends after its final evaluation and a checkpoint, and the same command resumes it."""
    text = os.environ.get(PARENT_ENV, "")
    if not (text.isascii() and text.isdigit()):
        return
    parent = int(text)

    def watch() -> None:
        while not stop.wait(every_s):
            if os.getppid() != parent:
                if on_stop is not None:
                    on_stop()
                stop.set()
                return

    threading.Thread(target=watch, name="ra-parent-watch", daemon=True).start()
