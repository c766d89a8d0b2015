"""The workspace folder: stores, trial folders, the pre-training cache, and the Optuna record of each stage.

```
<workspace>/                  default ./sweeps, or $SWEEPER_HOME, or workspace=
  optuna.db  mlflow.db        default stores (storage= / tracking_uri= point elsewhere)
  artifacts/                  MLflow artifacts of the default store
  trials/<study>/<stage>/<n>/ one folder per grid point (the trial-folder contract)
  cache/                      pre-training cache shared by trials
  jobs/                       local executor job records
```
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState, create_trial

from trainer.files import file_lock


def default_root() -> Path:
    return Path(os.environ.get("SWEEPER_HOME") or "sweeps")


@dataclass(frozen=True)
class Workspace:
    root: Path
    storage: str  # Optuna storage URL
    tracking_uri: str  # MLflow tracking URI

    @classmethod
    def resolve(cls, root: str | None = None, storage: str | None = None, tracking_uri: str | None = None) -> Workspace:
        path = Path(root).expanduser() if root else default_root()
        path = path.resolve()
        return cls(path, storage or f"sqlite:///{path / 'optuna.db'}", tracking_uri or f"sqlite:///{path / 'mlflow.db'}")

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    def trial_dir(self, study: str, stage: str, number: int) -> Path:
        return self.root / "trials" / study / stage / str(number)

    def sqlite_file(self) -> Path | None:
        """The Optuna SQLite file, or None for a server or journal storage."""
        prefix = "sqlite:///"
        return Path(self.storage[len(prefix) :]) if self.storage.startswith(prefix) else None

    def journal_file(self) -> Path | None:
        """The Optuna journal file for `storage=journal:///path/optuna.journal`, else None."""
        prefix = "journal://"
        return Path(self.storage[len(prefix) :]) if self.storage.startswith(prefix) else None

    def open_storage(self) -> BaseStorage:
        """The Optuna storage: an RDB URL (SQLite, PostgreSQL, MySQL), or a journal file on a shared file
        system (`journal:///shared/optuna.journal`), whose appends are serialised by a file lock."""
        journal = self.journal_file()
        if journal is None:
            return optuna.storages.get_storage(self.storage)
        journal.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))

    def exists(self) -> bool:
        """Whether this workspace holds an Optuna record (only checkable for files; servers say True)."""
        db = self.sqlite_file() or self.journal_file()
        return db is None or db.exists()

    @contextlib.contextmanager
    def claim_lock(self) -> Iterator[None]:
        """Serialize grid bookkeeping between sweeper processes on one machine.

        Optuna pops a WAITING trial atomically in PostgreSQL/MySQL (SELECT ... FOR UPDATE), but on SQLite
        the read and the update are separate statements: two processes popping from one queue took the same
        trial 9 times in 300 (measured with optuna 5.0). SQLite is single-machine, so a file lock fixes it.
        """
        db = self.sqlite_file()
        with file_lock(db.with_name(db.name + ".lock")) if db else contextlib.nullcontext():
            yield


def workspace_of(trial_dir: Path) -> Path:
    """The workspace holding `trials/<study>/<stage>/<n>/`."""
    return trial_dir.resolve().parents[3]


# --- The Optuna record of a stage -------------------------------------------------------------------
# Each grid point is enqueued as a WAITING trial that already carries its params; a sweeper process claims
# one by the atomic WAITING -> RUNNING transition (under `claim_lock` on SQLite). A failed or interrupted
# attempt is finished as FAIL and the point is enqueued again (same trial folder, so it resumes from its
# checkpoint) until it has failed `max_retries + 1` times. Neither `study.ask` nor `study.tell` is used, which
# avoids GridSampler's duplicate-on-exhausted-grid and RuntimeError-on-final-tell traps of optuna 5.0.

CANCELLED = "cancelled"  # reason prefix of attempts stopped by `sweeper cancel` (not counted as failures)


def point_key(params: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in params.items()))


def stage_trials(storage: BaseStorage, study_id: int) -> dict[tuple[tuple[str, str], ...], list[FrozenTrial]]:
    """Trials of a stage grouped by grid point, each group in trial-number order."""
    groups: dict[tuple[tuple[str, str], ...], list[FrozenTrial]] = {}
    for t in storage.get_all_trials(study_id, deepcopy=False):
        groups.setdefault(point_key(t.params), []).append(t)
    return groups


def failures(trials: list[FrozenTrial]) -> int:
    return sum(t.state == TrialState.FAIL and not str(t.user_attrs.get("reason", "")).startswith(CANCELLED) for t in trials)


def needs_attempt(trials: list[FrozenTrial], max_retries: int) -> bool:
    """Whether a grid point has no live or finished trial and retries left."""
    live = {TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING}
    return not any(t.state in live for t in trials) and failures(trials) <= max_retries


def resolved(trials: list[FrozenTrial], max_retries: int) -> bool:
    """A grid point is done: it completed, or it failed more than `max_retries` times."""
    live = {TrialState.RUNNING, TrialState.WAITING}
    return any(t.state == TrialState.COMPLETE for t in trials) or (not any(t.state in live for t in trials) and failures(trials) > max_retries)


def enqueue(storage: BaseStorage, study_id: int, ws: Workspace, study: str, stage: str,
            grid: dict[str, tuple[str, ...]], points: list[dict[str, str]], max_retries: int) -> None:
    """Enqueue every grid point that needs an attempt (call under `ws.claim_lock()`)."""
    groups = stage_trials(storage, study_id)
    distributions = {k: CategoricalDistribution(list(v)) for k, v in grid.items()}
    for point in points:
        trials = groups.get(point_key(point), [])
        if not needs_attempt(trials, max_retries):
            continue
        attrs = {"attempt": failures(trials) + 1}
        if trials:
            attrs["trial_dir"] = trials[0].user_attrs["trial_dir"]
        template = create_trial(state=TrialState.WAITING, params=point, distributions=distributions, user_attrs=attrs)
        trial_id = storage.create_new_trial(study_id, template_trial=template)
        if not trials:
            number = storage.get_trial_number_from_id(trial_id)
            storage.set_trial_user_attr(trial_id, "trial_dir", str(ws.trial_dir(study, stage, number)))


def claim(storage: BaseStorage, study_id: int) -> FrozenTrial | None:
    """Take the lowest-numbered WAITING trial (WAITING -> RUNNING is atomic in the storage); None if none left."""
    for t in sorted(storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)), key=lambda t: t.number):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        if storage.set_trial_state_values(trial_id, TrialState.RUNNING):
            return storage.get_trial(trial_id)
    return None


def finish(storage: BaseStorage, study_id: int, number: int, state: TrialState, value: float | None, attrs: dict[str, Any]) -> bool:
    """Record the end of a trial; False when another process finished it first."""
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    try:
        for key, v in attrs.items():
            storage.set_trial_user_attr(trial_id, key, v)
        return storage.set_trial_state_values(trial_id, state, None if value is None else [value])
    except UpdateFinishedTrialError:
        return False
