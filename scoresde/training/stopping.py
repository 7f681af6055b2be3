"""Stopping a training loop on SIGINT/SIGTERM at a step boundary, with every DDP rank stopping
at the same step."""
from __future__ import annotations

import signal
import threading

import torch


class StopSignals:
    """with StopSignals() as stop: SIGINT or SIGTERM sets stop.signal (its name), so the loop can
    finish its step and checkpoint; a second signal raises KeyboardInterrupt at once.  Outside
    the main thread no handler can be installed and stop.signal stays None.  The old handlers
    come back on exit."""

    def __init__(self):
        self.signal: str | None = None
        self._old = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.signal:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def agree_to_stop(local: str | None, device) -> str | None:
    """Under torch.distributed: the signal name when any rank has one (all ranks must call this
    at the same steps), so all stop together; `local` is this rank's stop.signal."""
    import torch.distributed as dist

    flag = torch.tensor([1.0 if local else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return (local or "a signal on another rank") if flag.item() else None
