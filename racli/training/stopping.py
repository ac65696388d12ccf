"""How `ra train` and `ra experiment` stop on SIGINT / SIGTERM: gracefully, then at once."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence

EXIT_INTERRUPTED = 130  # the exit code of a stopped command (a run stopped, to be continued)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, children: Sequence = ()) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM set `stop` and send one SIGINT to each process in
    `children` (read at each signal, so the caller may add and remove its child processes).

    The first signal asks for a graceful stop: the caller's runs end after their final
    evaluation and a checkpoint. A second one is passed on again (children stop at once)
    and, once no child process is left, raises KeyboardInterrupt here. Outside the main
    thread nothing is installed."""
    count = 0

    def handler(signum, frame):
        nonlocal count
        count += 1
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
