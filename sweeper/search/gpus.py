"""GPU booking that every sweeper on the machine sees (issue 9 item 8, issue 12 `executor.trials_per_gpu`).

A GPU has `per_gpu` slots; slot s of GPU g is the file `<SWEEPER_GPU_LOCKS or /tmp/sweeper-gpus>/gpu<g>.slot<s>.lock`
and is booked by holding an exclusive `flock` on it. The trial's worker process books its slot itself and
holds it for its whole life; the kernel releases it when the process ends, however it ends (exit, crash,
kill -9), so a restarted sweeper, or a second one on the same machine, can never book a GPU slot twice.
Slots are tried slot-major (slot 0 of every GPU, then slot 1 of every GPU, ...), so trials spread evenly
over the GPUs instead of filling GPU 0 first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import IO

POLL_S = 1.0


def locks_dir() -> Path:
    """The machine-wide folder of slot locks (world-writable, like /tmp, so every user's sweepers share it)."""
    folder = Path(os.environ.get("SWEEPER_GPU_LOCKS") or "/tmp/sweeper-gpus")
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(PermissionError):  # made by another user at the same moment
            folder.chmod(0o1777)
    return folder


def try_book(gpus: int, per_gpu: int) -> tuple[int, int, IO[str]] | None:
    """(gpu, slot, open lock file) of the first free slot, slot-major; None when every slot is held.
    Keep the file open for as long as the GPU is used: closing it (or exiting) releases the slot."""
    folder = locks_dir()
    for slot in range(per_gpu):
        for gpu in range(gpus):
            path = folder / f"gpu{gpu}.slot{slot}.lock"
            f = open(path, "a")  # noqa: SIM115 (held open: the lock lasts as long as the file)
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            with contextlib.suppress(PermissionError):  # another user's file: still lockable by us
                os.chmod(path, 0o666)
            return gpu, slot, f
    return None


def book(gpus: int, per_gpu: int, announce: bool = True) -> tuple[int, IO[str]]:
    """Wait for a free slot and book it; returns (gpu, open lock file)."""
    waited = False
    while (booked := try_book(gpus, per_gpu)) is None:
        if announce and not waited:
            print(f"[sweeper] all {gpus * per_gpu} GPU slots of this machine are booked; waiting for one", flush=True)
            waited = True
        time.sleep(POLL_S)
    gpu, slot, f = booked
    if announce:
        print(f"[sweeper] booked GPU {gpu} slot {slot} ({f.name})", flush=True)
    return gpu, f


def held() -> dict[int, int]:
    """GPU -> number of its slots booked right now (by any process on this machine)."""
    out: dict[int, int] = {}
    for path in locks_dir().glob("gpu*.slot*.lock"):
        with open(path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                gpu = int(path.name.split(".")[0].removeprefix("gpu"))
                out[gpu] = out.get(gpu, 0) + 1
    return out


def thread_share(cores: int, concurrent: int) -> int:
    """Intra-op threads per trial on a CPU: the cores split evenly among the trials that run at once, at least 1."""
    return max(1, cores // max(1, concurrent))
