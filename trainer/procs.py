"""Processes of this machine: a process's identity (pid plus start time, so a recycled pid is told apart) and
tying a child's life to its parent's (Linux's parent-death signal)."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def process_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in "ZX" else fields[19]


def identity() -> str:
    """`host pid start` of this process: what a lock file records of its holder."""
    return f"{socket.gethostname()} {os.getpid()} {process_start(os.getpid()) or 0}"


def gone(holder: str) -> bool:
    """Whether the process an `identity()` string names has ended. Only a process of this host can be judged:
    one of another host (a lock on a shared file system), or an unreadable record, is never called gone."""
    parts = holder.split()
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    return process_start(int(parts[1])) != parts[2]


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> None:
    """In a child process: receive `sig` when the parent dies, however it dies (Linux; elsewhere a no-op).
    Given the parent's pid, exit at once if it died before the request took effect (the child was orphaned
    between fork and here, and the kernel would never send the signal)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig))
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)
