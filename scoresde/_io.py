"""Atomic file writes: a temp file in the target's folder, fsync, then os.replace, so an
interrupted run (Ctrl-C, a crash, a full disk) never leaves a half-written file behind; whole
folders written the same way; the leftovers of killed writers removed.
The result gets the mode a plain open() would give (0o666 & ~umask), not mkstemp's private 0600."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import socket
import tempfile
import zlib


def _umask() -> int:
    # the only portable way to read the umask is to set it; put it straight back
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str, clean: bool = True):
    """Yield a temp path beside `path`; on success it replaces `path`, on error it is removed.
    clean: first remove the temps that dead writers left beside it (a caller writing many files
    into one folder does that once, not once per file)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if clean:
        remove_temps(folder)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(), suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _prefix() -> str:
    return f".tmp-{_host()}-{os.getpid()}-"


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_csv(path: str, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


# -- leftovers of killed writers ----------------------------------------------------------------
# Temp names carry the writer's host and pid (.tmp-<host>-<pid>-…), so a later writer can tell a
# dead writer's leftover from a live one's work in progress.

def _host() -> str:
    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def remove_temps(folder: str, only_dead: bool = True) -> list[str]:
    """Delete the `.tmp-*` files and folders a killed writer left in `folder`: those of dead
    processes on this host, or every one (only_dead=False, for a folder this process has locked).
    Returns the names removed."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(".tmp-"):
            continue
        if only_dead:
            host, _, rest = name[5:].partition("-")
            pid = rest.partition("-")[0]
            if host != _host() or not pid.isdigit() or _alive(int(pid)):
                continue
        path = os.path.join(folder, name)
        with contextlib.suppress(OSError):
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
            removed.append(name)
    return removed


def check_new_output(path: str, overwrite: bool, option: str) -> None:
    """Refuse to replace an existing output unless `overwrite` (checked before any work is done)."""
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{option} {path!r} already exists; pass --overwrite to replace it, or choose another "
                              f"{option}")


@contextlib.contextmanager
def atomic_dir(path: str, overwrite: bool = False):
    """Yield a temp folder beside `path`; when the block succeeds it is renamed to `path` (an
    existing `path` is replaced only with overwrite=True), so `path` always holds one whole run's
    files; on error the temp folder is removed."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    remove_temps(parent)
    tmp = tempfile.mkdtemp(prefix=_prefix(), dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's folder is private (0700); the result is not
        if os.path.lexists(path):
            if not overwrite:
                raise FileExistsError(f"{path!r} appeared while this run was writing; its results are "
                                      f"left in {tmp!r}")
            old = tempfile.mkdtemp(prefix=_prefix(), dir=parent)
            os.replace(path, os.path.join(old, "old"))
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except FileExistsError:
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- one run per folder ---------------------------------------------------------------------------
