"""GPU booking that every sweeper of this user on the machine sees (issue 9 item 8, issue 12
`executor.trials_per_gpu`), safe beside other users (issue 19).

A GPU has `per_gpu` slots; slot s of GPU g is the file `<folder>/gpu<g>.slot<s>.lock` and is booked by holding
an exclusive `flock` on it. The trial's worker process books its slot itself and holds it for its whole life;
the kernel releases it when the process ends, however it ends (exit, crash, kill -9), so a restarted sweeper,
or a second one on the same machine, can never book a GPU slot twice. Slots are tried slot-major (slot 0 of
every GPU, then slot 1 of every GPU, ...), so trials spread evenly over the GPUs instead of filling GPU 0 first.

The folder is `/tmp/sweeper-gpus-<uid>` (this user's, mode 0700) unless `SWEEPER_GPU_LOCKS` names another:
sharing the GPUs with other users is opt-in, through a folder they all name, made by root with mode 1777
(`install -d -m 1777 /var/lock/sweeper-gpus`) or owned by the user. A folder that is a symbolic link, or is
someone else's (other than root's 1777), is refused. Lock files are opened read-only without following links
and without blocking (O_NOFOLLOW | O_NONBLOCK: a planted FIFO or link cannot hang or redirect us), must be
regular files, and only our own are made readable by others (fchmod of the descriptor, never of a path).
`book` says who holds the slots while it waits and gives up after `SWEEPER_GPU_WAIT_S` (default 1 h).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import stat
import time
from pathlib import Path

from trainer import heartbeat
from trainer.errors import MachineFault, UserError

POLL_S = 1.0
WAIT_S = float(os.environ.get("SWEEPER_GPU_WAIT_S", "3600"))  # how long `book` waits for a slot before giving up


def locks_dir() -> Path:
    """The folder of slot locks (see the module docstring), created if missing; UserError when it is unsafe."""
    shared = os.environ.get("SWEEPER_GPU_LOCKS")
    folder = Path(shared or f"/tmp/sweeper-gpus-{os.geteuid()}")
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700, parents=True)
    st = os.lstat(folder)
    fix = "remove it, or set SWEEPER_GPU_LOCKS to a folder of your own"
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UserError(
            f"GPU lock folder {folder} is a {'symbolic link' if stat.S_ISLNK(st.st_mode) else 'file'}, not a folder: {fix}"
        )
    shared_by_root = st.st_uid == 0 and st.st_mode & 0o1777 == 0o1777
    if st.st_uid != os.geteuid() and not shared_by_root:
        raise UserError(
            f"GPU lock folder {folder} belongs to uid {st.st_uid}, not to you, and is not a root-owned "
            f"folder of mode 1777: {fix}"
        )
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise UserError(
            f"GPU lock folder {folder} is writable by others without the sticky bit (mode "
            f"{stat.S_IMODE(st.st_mode):o}): chmod 1777 {folder} (shared) or chmod 700 (yours)"
        )
    return folder


def open_slot(path: Path) -> int:
    """A read-only descriptor of a slot's lock file, created if missing; UserError for a link, FIFO or other
    non-regular file planted there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(
                f"GPU slot lock {path} is a symbolic link (planted by someone?); refusing it: remove it, "
                f"or set SWEEPER_GPU_LOCKS to a folder of your own"
            ) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UserError(
            f"GPU slot lock {path} is not a regular file (a FIFO, device or folder, planted by someone?); "
            f"refusing it: remove it, or set SWEEPER_GPU_LOCKS to a folder of your own"
        )
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != 0o644:
        os.fchmod(fd, 0o644)  # readable by the other users of a shared folder (a read-only descriptor can flock)
    return fd


def try_book(gpus: int, per_gpu: int, exclude: frozenset[int] = frozenset()) -> tuple[int, int, int] | None:
    """(gpu, slot, open lock descriptor) of the first free slot, slot-major, on a GPU not in `exclude`; None when
    every such slot is held.
    Keep the descriptor open for as long as the GPU is used: closing it (or exiting) releases the slot."""
    folder = locks_dir()
    for slot in range(per_gpu):
        for gpu in (g for g in range(gpus) if g not in exclude):
            fd = open_slot(folder / f"gpu{gpu}.slot{slot}.lock")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return gpu, slot, fd
    return None


def book(gpus: int, per_gpu: int, announce: bool = True, wait_s: float = WAIT_S) -> tuple[int, int]:
    """Wait for a free slot and book it; returns (gpu, open lock descriptor). While waiting it says who holds the
    slots; after `wait_s` it gives up (MachineFault EBUSY: the environment's fault, no retry spent)."""
    start = time.monotonic()
    waited = False
    while (booked := try_book(gpus, per_gpu)) is None:
        if time.monotonic() - start > wait_s:
            raise MachineFault(
                errno.EBUSY,
                f"every GPU slot stayed booked for {wait_s:.0f} s ({holders_text()}): "
                "wait for them to end, or set SWEEPER_GPU_LOCKS to a folder of your own, then run again",
            )
        if announce and not waited:
            print(
                f"[sweeper] all {gpus * per_gpu} GPU slots of this machine are booked ({holders_text()}); waiting "
                f"for one (at most {wait_s:.0f} s, SWEEPER_GPU_WAIT_S)",
                flush=True,
            )
            waited = True
        heartbeat.beat("waiting for a GPU slot")
        time.sleep(POLL_S)
    gpu, slot, fd = booked
    if announce:
        print(f"[sweeper] booked GPU {gpu} slot {slot} ({locks_dir() / f'gpu{gpu}.slot{slot}.lock'})", flush=True)
    return gpu, fd


def holders() -> dict[str, list[int]]:
    """Slot file name -> pids holding its flock (Linux /proc/locks), for the booked slots of the folder."""
    folder = locks_dir()
    keys: dict[str, str] = {}
    for path in folder.glob("gpu*.slot*.lock"):
        st = os.lstat(path)
        keys[f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"] = path.name
    out: dict[str, list[int]] = {}
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] in keys:
            out.setdefault(keys[fields[5]], []).append(int(fields[4]))
    return out


def holders_text() -> str:
    """`gpu0.slot0: pid 123 (alice), ...`: who holds the slots, as far as this machine tells."""
    parts = []
    for name, pids in sorted(holders().items()):
        parts.append(
            f"{name.removesuffix('.lock')}: " + ", ".join(f"pid {p} ({_user_of(p)})" for p in sorted(set(pids)))
        )
    return "; ".join(parts) or "holders unknown"


def _user_of(pid: int) -> str:
    try:
        uid = next(
            int(line.split()[1])
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("Uid:")
        )
    except (OSError, StopIteration):
        return "?"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def book_devices(gpus: int, per_gpu: int, count: int) -> tuple[list[int], list[int]]:
    """Wait for a slot on each of `count` different GPUs (one training on `count` devices, `train.devices`) and
    book them all; returns (GPUs, open lock descriptors). A partial set is released before waiting again, so two
    trainings that each hold part of what they need never wait for each other."""
    waited = False
    while True:
        booked: list[tuple[int, int, int]] = []
        while len(booked) < count and (one := try_book(gpus, per_gpu, frozenset(b[0] for b in booked))) is not None:
            booked.append(one)
        if len(booked) == count:
            print(f"[sweeper] booked GPUs {', '.join(f'{g} slot {s}' for g, s, _ in booked)}", flush=True)
            return [g for g, _, _ in booked], [f for _, _, f in booked]
        for _, _, fd in booked:
            os.close(fd)
        if not waited:
            print(f"[sweeper] {count} GPUs with a free slot are not free at once; waiting", flush=True)
            waited = True
        heartbeat.beat(f"waiting for {count} GPU slots")
        time.sleep(POLL_S)


def held() -> dict[int, int]:
    """GPU -> number of its slots booked right now (by any process on this machine)."""
    out: dict[int, int] = {}
    for path in locks_dir().glob("gpu*.slot*.lock"):
        fd = open_slot(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            gpu = int(path.name.split(".")[0].removeprefix("gpu"))
            out[gpu] = out.get(gpu, 0) + 1
        finally:
            os.close(fd)
    return out


def thread_share(cores: int, concurrent: int) -> int:
    """Intra-op threads per trial on a CPU: the cores split evenly among the trials that run at once, at least 1."""
    return max(1, cores // max(1, concurrent))
