"""Stopping a training loop on SIGINT/SIGTERM at a step boundary, with every DDP rank stopping
at the same step."""
from __future__ import annotations

import signal
import threading

from scoresde import _signals


class StopSignals:
    """with StopSignals() as stop: SIGINT or SIGTERM sets stop.signal (its name), so the loop can
    finish its step and checkpoint; a second signal raises KeyboardInterrupt at once (except
    inside a _signals.deferred() block, such as a checkpoint write, which finishes first).
    Outside the main thread no handler can be installed and stop.signal stays None.  The old
    handlers come back on exit.  The first signal is also recorded process-wide
    (_signals.request_stop): the CLI's own handler then swallows any later one, which could only
    interrupt the way out (a KeyboardInterrupt in an atexit callback prints a traceback)."""

    def __init__(self):
        self.signal: str | None = None
        # set by the loop once its stop is decided and its last checkpoint written: a further
        # signal could then only cut the way out short (the lock's release, the message), so it is ignored
        self.committed = False
        self._old = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.signal:
            if self.committed:
                return
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        _signals.request_stop(self.signal)

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def agree_to_stop(local: str | None, device) -> str | None:
    """Under torch.distributed: the signal name when any rank has one (all ranks must call this
    at the same steps), so all stop together; `local` is this rank's stop.signal."""
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1.0 if local else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return (local or "a signal on another rank") if flag.item() else None
