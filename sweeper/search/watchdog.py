"""The stall watchdog (issue 19): a running job whose heartbeat has not moved for `executor.stall_s` is killed,
and its end becomes a fault of the machine (no retry spent; the next attempt resumes from the checkpoint).

The heartbeat is the trial's `progress.json` (`trainer.heartbeat`), rewritten atomically while the job trains
or waits on something that moves; only its file identity is compared, never a time in it, so the clocks of the
nodes do not matter. The state machine (`sweeper.search.machine`) asks `Watchdog.look` on each poll of a
running job, records what it answers on the trial and kills the job; this module only watches and counts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from sweeper.search.progress import duration, read_progress
from trainer import ledger

STALL_MIN_S = 600.0  # the default executor.stall_s: 10 minutes without progress, or ...
STALL_STEPS = 10  # ... the time of 10 of the trial's steps, when that is longer
FIRST_SEEN = "first seen"  # what `look` says of a job it has not watched before


def progress_mark(trial_dir: Path) -> tuple[int, int, int] | None:
    """What changes whenever the trial's heartbeat is written: progress.json's inode, mtime and size; None while
    there is none."""
    try:
        st = (trial_dir / "progress.json").stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def stall_limit(progress: dict[str, Any]) -> float:
    """The default `executor.stall_s` of a trial: the longer of STALL_MIN_S and STALL_STEPS of its steps (`it_s`
    of its progress.json, the rate of its current call)."""
    it_s = progress.get("it_s") or 0.0
    return max(STALL_MIN_S, STALL_STEPS / it_s) if it_s > 0 else STALL_MIN_S


@dataclass
class Watch:
    """What the watchdog last saw of a running job: its launch token, its heartbeat's mark, and since when."""

    token: str
    mark: tuple[int, int, int] | None
    since: float  # time.monotonic() when `mark` was first seen


class Watchdog:
    """The stall clocks of one stage's running jobs, as this process saw them (a restarted sweeper starts them
    again). `stall_s`: seconds of silence before a kill (None: `stall_limit`; 0: never)."""

    def __init__(self, stall_s: float | None) -> None:
        self.stall_s = stall_s
        self.watches: dict[int, Watch] = {}  # trial number -> its job's clock

    def look(self, number: int, token: str, trial_dir: Path) -> str | None:
        """One poll of trial `number`'s running job: FIRST_SEEN for a job not watched before, the reason to kill
        it when it has been silent for its limit (the clock then starts again: a job that outlives its kill, in
        uninterruptible I/O, is killed again after another limit), else None."""
        if self.stall_s == 0:
            return None
        mark, watch, now = progress_mark(trial_dir), self.watches.get(number), time.monotonic()
        if watch is None or watch.token != token:
            self.watches[number] = Watch(token, mark, now)
            return FIRST_SEEN
        if mark != watch.mark:
            watch.mark, watch.since = mark, now
            return None
        silent = now - watch.since
        if silent < (self.stall_s or STALL_MIN_S):  # (a lower bound of the default: progress.json read only past it)
            return None
        limit = self.stall_s or stall_limit(read_progress(trial_dir))
        if silent < limit:
            return None
        watch.since = now
        return (f"stalled: no progress for {duration(silent)}, killed by the watchdog (executor.stall_s={limit:g}: "
                "raise it if the trial was only slow, 0 turns the watchdog off)")  # fmt: skip

    def forget(self, number: int) -> None:
        """The job is queued, unknown or ended: no clock runs for it."""
        self.watches.pop(number, None)


def stall_of(t: FrozenTrial) -> dict[str, Any] | None:
    """The record of this launch's job being killed for stalling (the trial's `stalled` attr), if it was."""
    stalled = t.user_attrs.get("stalled")
    return stalled if stalled and stalled["token"] == t.user_attrs.get("launch_token") else None


def count_stall(t: FrozenTrial, trial_dir: Path, stalled: dict[str, Any]) -> None:
    """The stalled job's time in the trial's cost ledger: from when it was first seen running to its kill,
    less what its own ledger line recorded (`trainer.ledger.record_lost`; once per job)."""
    since = t.user_attrs.get("running_since") or [None, stalled["killed_at"]]
    held = stalled["killed_at"] - since[1] if since[0] == stalled["token"] else 0.0
    ledger.record_lost(trial_dir, t.user_attrs.get("ledger_lines", 0), held, stalled["token"])
