"""The run folder of a training run: one run at a time (RunLock on FOLDER/.lock), the temp files
of a killed writer removed when the lock is taken, a checkpoint changed by someone else while
the lock was let go refused, and log.jsonl cut back to the checkpoint's step on resume."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time

from scoresde._io import remove_temps, write_text

log = logging.getLogger("scoresde")


LOCK = ".lock"


class LockError(ValueError):
    pass


class RunLock:
    """An exclusive lock on a folder, held from acquire() to release(): FOLDER/.lock is flock()ed
    and holds its owner's pid and host.  The kernel drops the flock when the owner dies, so a
    lock file left by a killed run is recognised as stale and taken over (self.stale says whose)."""

    def __init__(self, folder: str):
        self.folder, self.path = folder, os.path.join(folder, LOCK)
        self.fd, self.stale = None, None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover  (not POSIX: no locking)
            return self
        os.makedirs(self.folder, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_fd(fd) or "another process"
                os.close(fd)
                raise LockError(f"{self.folder} is in use by {holder} (lock file {self.path}); wait for that "
                                f"run to end, or choose another --out") from None
            try:  # the previous owner may have removed the file between our open and flock
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.stale = _read_fd(fd) or None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.remove(self.path)  # while still holding it: a waiter re-checks the inode
            os.close(self.fd)
            self.fd = None


def _read_fd(fd: int) -> str:
    with contextlib.suppress(OSError):
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 400).decode("utf-8", "replace").strip()
    return ""


class RunFolder:
    """OUT as one trainer holds it: acquire() (rank 0 only) locks it and clears killed writers'
    temp files; release() lets it go, remembering the checkpoint it leaves, so a later acquire()
    refuses to go on if another run has changed that file since."""

    def __init__(self, out: str, checkpoint: str, owner: bool = True):
        self.out, self.checkpoint, self.owner = out, os.path.join(out, checkpoint), owner
        self._lock, self._seen = None, None

    def acquire(self) -> None:
        """Lock the folder (a second holder gets LockError naming the first); a no-op off rank 0
        or while held."""
        from scoresde.training.checkpoint import CheckpointError

        if not self.owner or self._lock is not None:
            return
        lock = RunLock(self.out).acquire()
        if lock.stale:
            log.warning(f"{self.out}: took over a stale lock ({lock.stale}; that process is gone)")
        removed = remove_temps(self.out, only_dead=False) + remove_temps(os.path.join(self.out, "previews"),
                                                                         only_dead=False)
        if removed:
            log.warning(f"{self.out}: removed {len(removed)} temp file(s) left by a killed writer")
        if self._seen is not None and _fingerprint(self.checkpoint) != self._seen:
            lock.release()
            raise CheckpointError(f"{self.checkpoint} was changed by another run since this trainer last saved it; "
                                  f"start a new Trainer with resume=True")
        self._lock = lock

    def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            self._seen = _fingerprint(self.checkpoint)
            lock.release()


def _fingerprint(path: str):
    try:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size, st.st_ino
    except FileNotFoundError:
        return None


def cut_log(path: str, step: int) -> None:
    """Keep the JSON lines of `path` whose step is <= `step` (0: none), dropping a line a kill
    cut short, so a resumed run logs no step twice."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines(keepends=True)
    keep = []
    for line in lines:
        try:
            ok = line.endswith("\n") and json.loads(line)["step"] <= step
        except (ValueError, KeyError, TypeError):
            ok = False  # a line cut short by a kill
        if ok:
            keep.append(line)
    if keep != lines:
        write_text(path, "".join(keep))
