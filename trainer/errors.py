"""What went wrong, and whose fault it was: the exception types the CLI prints in one line, no traceback (a
user's mistake: UserError; a fault of the machine found by a check: MachineFault, NoSpace), and `environment_fault`, which tells
the machine's faults (a retry may succeed once they are fixed) from a run's own failure (a retry repeats it)."""

from __future__ import annotations

import errno


class UserError(Exception):
    """Bad input from the user (config, data, weights): the message names the bad value and what is valid."""


class MachineFault(OSError):
    """A fault of the machine found by our own checks (a full disk, GPU slots held by others for too long): an
    OSError with the matching errno whose message is one line naming the cause, the numbers and the fix."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)

    def __str__(self) -> str:
        return str(self.strerror)


class NoSpace(MachineFault):
    """No space left for a write, found before it (a free-space check) or after it (ENOSPC, or torch's writer
    failing on a full disk): errno ENOSPC, the message names the file system, what is free and what was needed."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)


# errno of the machine's faults: the cause in words and what fixes it ({file}: the file the error names)
MACHINE_ERRNOS = {
    errno.ENOSPC: ("no space left on the file system of {file}", "free some space (or use a larger disk)"),
    errno.EDQUOT: ("disk quota exceeded writing {file}", "free some of your files or ask for a larger quota"),
    errno.EIO: ("I/O error on {file} (a failing disk or network file system)", "check that file system"),
    errno.EROFS: ("the file system of {file} is read-only", "remount it read-write or pass another workspace="),
    errno.ESTALE: (
        "stale network file handle for {file} (the file server restarted or the file was replaced)",
        "check the mount",
    ),
    errno.ENOTCONN: ("{file}'s file system is disconnected", "mount it again"),
    errno.ENOMEM: ("out of memory", "stop other processes or lower executor.n_jobs"),
}


def environment_fault(e: BaseException | None) -> str | None:
    """A one-line reason naming the cause and its fix when an exception (or one it was raised from) is the
    machine's fault rather than the run's: a full, read-only, failing or disconnected file system, host or
    CUDA memory exhausted. None for the run's own failure (a bug, a bad setting, a divergence), which a retry
    would only repeat."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, MachineFault):
            return str(e)
        if isinstance(e, OSError) and e.errno in MACHINE_ERRNOS:
            cause, fix = MACHINE_ERRNOS[e.errno]
            return f"{cause.format(file=e.filename or 'a file')}: {fix}, then run again"
        if type(e).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(e):  # torch.cuda.OutOfMemoryError
            return (
                "CUDA out of memory (another process on the GPU, or too much packed on it): free the GPU or lower "
                "executor.trials_per_gpu / data.batch_size, then run again"
            )
        if isinstance(e, MemoryError):
            return "out of host memory: stop other processes or lower executor.n_jobs, then run again"
        e = e.__cause__ or e.__context__
    return None
