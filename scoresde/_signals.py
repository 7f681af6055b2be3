"""SIGINT and SIGTERM around the few moments a signal must not land in: a file being written
(deferred()), and a process already on its way out after an interrupt (stop_requested(), which
the CLI's handler reads so that a second Ctrl-C cannot raise into atexit callbacks or
interpreter shutdown)."""
from __future__ import annotations

import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_stop: list[str] = []  # the first stop signal since reset(); process-wide, as signals are


def request_stop(name: str) -> None:
    """Record that this process is stopping because of `name` (the first call wins)."""
    if not _stop:
        _stop.append(name)


def stop_requested() -> str | None:
    """The signal that started this process's stop, or None."""
    return _stop[0] if _stop else None


def reset() -> None:
    """Forget a recorded stop (a CLI command run in-process, as the tests do, starts afresh)."""
    _stop.clear()


@contextlib.contextmanager
def deferred():
    """Hold SIGINT and SIGTERM for the block and hand them to the handlers that were installed
    before it once the block has ended (successfully or not), so a KeyboardInterrupt can never
    be raised half-way through the block, e.g. between writing a temp file and removing it.
    Nested blocks hold until the outermost ends.  Outside the main thread no handler can be
    installed and the block runs unprotected (signals are only ever delivered to the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum, frame):
        held.append(signum)

    old = {}
    try:
        for sig in STOP_SIGNALS:
            old[sig] = signal.signal(sig, hold)
        yield
    finally:
        _restore(list(old.items()))
        for sig in held:
            _deliver(sig, old.get(sig))


def _restore(items: list) -> None:
    # a signal landing between two restores may raise in the restored handler; the others must
    # still be put back, or SIGTERM would stay held for good
    if items:
        try:
            signal.signal(*items[0])
        finally:
            _restore(items[1:])


def _deliver(signum: int, handler) -> None:
    """Run what `handler` (as signal.signal returned it) would have done with the signal."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL or handler is None:  # None: installed outside Python
        signal.raise_signal(signum)
