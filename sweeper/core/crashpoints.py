"""Named crash points of the sweeper's trial state machine, for the fault-injection tests.

`crash_point(name)` does nothing unless the environment variable `SWEEPER_CRASH_AT` is `name` or
`name:N`: then the N-th time (default 1) this process reaches the point it ends itself as `kill -9` would
(SIGKILL: no cleanup, no `finally`), or with SIGINT (Ctrl-C: the sweeper's own interrupt handling runs)
when `SWEEPER_CRASH_SIGNAL=INT`. tests/test_crash.py crashes at each name of `CRASH_POINTS` in turn, which
also proves that each is reached (none is dead code).

`inject_fault(trial_dir)` (called by the worker before training) makes the first job of each trial folder meet
a fault of the machine when `SWEEPER_INJECT` says so: `nospace` (a full disk: NoSpace raised) or `stall:S`
(the job hangs for S seconds before training, writing no progress: the stall watchdog's `executor.stall_s`
must kill it). A marker file in the folder keeps later jobs of the folder clean.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

from trainer.errors import NoSpace

CRASH_POINTS = (
    "enqueued",  # a grid point's WAITING trial exists
    "claimed",  # WAITING -> RUNNING, before the owner and lease are recorded
    "launching",  # launch token and budget.json written, before the executor is asked
    "submitted",  # the job exists, its id not yet on the trial
    "job_recorded",  # job id and executor recorded on the trial
    "rung_reported",  # a rung's value reported to Optuna, the trial not yet paused
    "before_promote",  # a paused trial chosen to go on, not yet relaunched
    "mlflow_run_created",  # the trial's MLflow run exists (created at its first progress or its end), nothing logged
    "live_forwarded",  # a batch of a trial's training-log lines is in its MLflow run, not yet remembered as forwarded
    "before_finish",  # the trial's MLflow run is complete, the Optuna trial still RUNNING
    "before_prune",  # a trial stopped by halving is logged to MLflow, the Optuna trial still RUNNING (paused)
    "after_finish",  # the Optuna trial is COMPLETE
    "race_recorded",  # a racing stage's round decided and recorded in Optuna, its trials not enqueued yet
    "stalled",  # a running trial silent for executor.stall_s is recorded as stalled, its job not yet killed
    "machine_fault",  # an attempt ended by a fault of the machine is FAIL (not counted), no new attempt yet
    "before_winner",  # the stage's trials are all settled, no winner recorded
    "after_winner",  # the winner is in Optuna, not yet in MLflow
)

_hits: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """End this process here when `SWEEPER_CRASH_AT` names this point (and hit count)."""
    assert name in CRASH_POINTS, name
    target = os.environ.get("SWEEPER_CRASH_AT")
    if not target:
        return
    point, _, count = target.partition(":")
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGINT if os.environ.get("SWEEPER_CRASH_SIGNAL") == "INT" else signal.SIGKILL)


def inject_fault(trial_dir: Path) -> None:
    """The first job of `trial_dir` meets the fault `SWEEPER_INJECT` names (see the module docstring)."""
    fault = os.environ.get("SWEEPER_INJECT")
    marker = Path(trial_dir) / ".fault-injected"
    if not fault or marker.exists():
        return
    marker.touch()
    kind, _, arg = fault.partition(":")
    if kind == "nospace":
        raise NoSpace(f"no space left on the file system of {trial_dir} (injected: SWEEPER_INJECT={fault})")
    if kind == "stall":
        time.sleep(float(arg))
