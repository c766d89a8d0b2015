"""Files that must never be half-written: atomic writes (temporary file in the same folder, fsync,
rename), free-space checks before large writes, the cross-process lock guarding shared caches and stores,
and content hashes.

A lock is never inherited: a process forked while this one holds locks (a pool worker, a data-loader worker)
has its copies of their descriptors pointed at /dev/null at once (`os.register_at_fork`), so a child left
running after its parent died can never keep a cache locked. A lock file records its holder (host, pid,
process start); a waiter that finds the lock held by a process of this host that has ended (its descriptor
kept by some other process) takes the lock over, with a message, on a fresh file."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from trainer.errors import NoSpace
from trainer.procs import gone, identity

LOCK_POLL_S = 0.2  # how often a waiter retries a held lock (and checks whether its holder is gone)
SPACE_MARGIN = 1 << 20  # free bytes kept beyond a write's estimate (file system metadata, a log line)
_held: set[int] = set()  # descriptors of the locks this process holds now


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call `write(f)` on a temporary file beside `path`, fsync it, then rename it over `path`. A full file
    system raises NoSpace (the temporary file removed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno == errno.ENOSPC and not isinstance(e, NoSpace):
            raise no_space(path, None, f"writing {path.name}") from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `path` (or its nearest
    existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def no_space(path: Path, need: int | None, what: str) -> NoSpace:
    """The one-line error for `what`, a write of ~`need` bytes (None: unknown) under `path`, that does not
    (or did not) fit."""
    needs = f", {what} needs ~{_mb(need)}" if need is not None else f" ({what})"
    return NoSpace(
        f"no space left on the file system of {path}: {_mb(free_bytes(path))} free{needs}; "
        f"free some space (or use a larger disk) and run again"
    )


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n < 10 * 2**20 else f"{n / 2**20:.0f} MB"


def check_space(path: Path, need: int, what: str) -> None:
    """Raise NoSpace when the file system of `path` has fewer than `need` bytes (plus a small margin) free."""
    if free_bytes(path) < need + SPACE_MARGIN:
        raise no_space(path, need, what)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object written by `write_json_atomic` (or by hand), or None when the file is missing, unreadable
    or holds something else: callers treat all three as "not there yet"."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1) + "\n")


@contextlib.contextmanager
def file_lock(path: Path, waiting: Callable[[], object] | None = None) -> Iterator[None]:
    """Exclusive advisory lock (flock) on `path` held for the block; other processes wait (calling `waiting`
    at every try: a training's heartbeat). Works on local disks and on shared file systems that support flock
    (NFSv4, Lustre mounted with -o flock). The file is opened without following a link and records this process
    as its holder; see the module docstring for inheritance and stale holders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _take_over_if_stale(path, fd)
            os.close(fd)
            if waiting is not None:
                waiting()
            time.sleep(LOCK_POLL_S)
            continue
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # taken over (unlinked) between our open and our flock: lock the new file instead
            os.close(fd)
            continue
        break
    _held.add(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (identity() + "\n").encode(), 0)
        yield
    finally:
        _held.discard(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _take_over_if_stale(path: Path, fd: int) -> None:
    """`path` (open as `fd`) is locked: when the holder it records has ended, unlink it so that the next try
    locks a fresh file. Decided under `<path>.takeover` so two waiters never unlink each other's new lock."""
    holder = os.pread(fd, 256, 0).decode(errors="replace").strip()
    if not holder or not gone(holder):
        return
    guard = os.open(
        path.with_name(path.name + ".takeover"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644
    )
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
                print(
                    f"note: {path} was held by process {holder.split()[1]}, which has ended (a process it left "
                    f"behind still has the lock open); taking the lock over",
                    file=sys.stderr,
                )
    finally:
        os.close(guard)


def _drop_inherited_locks() -> None:
    """In a forked child: point the descriptors of the parent's locks at /dev/null (the locks stay the parent's)."""
    if _held:
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        for fd in _held:
            os.dup2(null, fd, inheritable=False)
        os.close(null)
        _held.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
