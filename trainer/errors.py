"""The exception types the CLI prints in one line, no traceback: a user's mistake (UserError) and a file
system too full for what is about to be written (NoSpace, the environment's fault rather than the run's)."""

from __future__ import annotations

import errno


class UserError(Exception):
    """Bad input from the user (config, data, weights): the message names the bad value and what is valid."""


class NoSpace(OSError):
    """No space left for a write, found before it (a free-space check) or after it (ENOSPC, or torch's writer
    failing on a full disk): an OSError with errno ENOSPC whose message names the file system, what is free
    and what was needed."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.strerror)
