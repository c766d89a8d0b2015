"""The workspace folder: stores, trial folders, the pre-training cache, and the Optuna record of each stage.

```
<workspace>/                  default ./sweeps, or $SWEEPER_HOME, or workspace=
  optuna.db  mlflow.db        default stores (storage= / tracking_uri= point elsewhere)
  artifacts/                  MLflow artifacts of the default store
  trials/<study>/<stage>/<n>/ one folder per grid point and repeat (the trial-folder contract; `<n>-r<r>` for repeat r > 0)
  cache/                      pre-training cache shared by trials
  jobs/                       local executor job records
```
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState, create_trial

from sweeper.core.crashpoints import crash_point
from sweeper.core.repeats import REPEAT, Unit, grid_key, repeat_of
from trainer.errors import UserError
from trainer.files import file_lock


def private_dir(path: Path, what: str) -> Path:
    """`path` created with mode 0700, or checked when it exists: a folder that group or others may write is
    refused (whoever can write it can plant files that run as you: SLURM job pickles, trial folders)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o022:
        who = "group and others" if mode & 0o022 == 0o022 else "group" if mode & 0o020 else "others"
        raise UserError(
            f"{what} {path} is writable by {who} (mode {mode:o}): they could plant files that run as "
            f"you; make it yours alone with `chmod go-w {path}`, or use another folder"
        )
    return path


def default_root() -> Path:
    return Path(os.environ.get("SWEEPER_HOME") or "sweeps")


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///path` URL (Optuna or MLflow), None for any other URL: the one parser of them."""
    prefix = "sqlite:///"
    return Path(url[len(prefix) :]) if url.startswith(prefix) else None


@dataclass(frozen=True)
class Workspace:
    root: Path
    storage: str  # Optuna storage URL
    tracking_uri: str  # MLflow tracking URI

    @classmethod
    def resolve(cls, root: str | None = None, storage: str | None = None, tracking_uri: str | None = None) -> Workspace:
        path = Path(root).expanduser() if root else default_root()
        path = path.resolve()
        return cls(
            path, storage or f"sqlite:///{path / 'optuna.db'}", tracking_uri or f"sqlite:///{path / 'mlflow.db'}"
        )

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    def trial_dir(self, study: str, stage: str, name: int | str) -> Path:
        return self.root / "trials" / study / stage / str(name)

    def create(self) -> None:
        """Create the workspace folder (mode 0700), or refuse one that group or others may write."""
        private_dir(self.root, "workspace")

    def recorded_trial_dir(self, value: str) -> Path:
        """A trial folder as the Optuna record gives it, checked to lie (links resolved) in this workspace's
        `trials/`: a record someone else wrote must not make us write elsewhere."""
        path, trials = Path(value), (self.root / "trials").resolve()
        if not path.resolve().is_relative_to(trials):
            raise UserError(
                f"the Optuna record names trial folder {value}, outside {trials}; refusing to use it "
                "(a store shared with or changed by someone else?)"
            )
        return path

    def sqlite_file(self) -> Path | None:
        """The Optuna SQLite file, or None for a server or journal storage."""
        return sqlite_path(self.storage)

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
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(journal)))

    def create_stores(self) -> None:
        """Create the missing SQLite stores (Optuna, MLflow) whole: their tables are made in a temporary file
        renamed into place, so a kill while they are created leaves no half-made store behind. Call under
        a lock that other sweepers of the workspace take too."""
        from mlflow import MlflowClient

        makers: dict[str, Callable[[str], object]] = {
            self.storage: optuna.storages.RDBStorage,
            self.tracking_uri: lambda url: MlflowClient(url).search_experiments(),
        }
        for url, make in makers.items():
            db = sqlite_path(url)
            if db is not None and not db.exists():
                tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
                tmp.unlink(missing_ok=True)
                make(f"sqlite:///{tmp}")
                os.replace(tmp, db)

    def exists(self) -> bool:
        """Whether this workspace holds an Optuna record (only checkable for files; servers say True)."""
        db = self.sqlite_file() or self.journal_file()
        return db is None or db.exists()

    @contextlib.contextmanager
    def claim_lock(self) -> Iterator[None]:
        """Serialize grid bookkeeping (enqueue, claim) between sweeper processes sharing a storage file.

        Optuna pops a WAITING trial atomically in PostgreSQL/MySQL (SELECT ... FOR UPDATE), but on SQLite
        the read and the update are separate statements: two processes popping from one queue took the same
        trial 9 times in 300 (measured with optuna 5.0). A file lock beside the SQLite or journal file fixes
        it (and keeps two sweepers from enqueueing one grid point twice). Not `<file>.lock`: Optuna's journal
        backend creates and deletes that one itself.
        """
        db = self.sqlite_file() or self.journal_file()
        with file_lock(db.with_name(db.name + ".claim.lock")) if db else contextlib.nullcontext():
            yield


def workspace_of(trial_dir: Path) -> Path:
    """The workspace holding `trials/<study>/<stage>/<n>/`."""
    return trial_dir.resolve().parents[3]


# --- The Optuna record of a stage -------------------------------------------------------------------
# Each grid point is enqueued as a WAITING trial that already carries its params, its folder and its attempt
# number (one `create_new_trial`, so a kill cannot leave a trial without a folder); a sweeper claims one by
# the atomic WAITING -> RUNNING transition (under `claim_lock` for SQLite and journal files). A failed attempt
# is finished as FAIL and the point is enqueued again (same trial folder, so it resumes from its checkpoint)
# until it has failed `max_retries + 1` times. An attempt ended by a fault of the machine (a full disk, a killed
# job) is FAIL too, its reason starting "machine fault", and not counted. `retry_failed=true` re-opens a point
# that used up its retries: its new attempt carries `counted_from` (failures of earlier trials stop counting).
# Neither `study.ask` nor `study.tell` is used.

CANCELLED = "cancelled"  # reason prefix of attempts stopped by `sweeper cancel` (not counted as failures)
DUPLICATE = "duplicate"  # reason prefix of a grid point enqueued twice by racing sweepers (not counted)
MACHINE = "machine fault"  # reason prefix of attempts ended by a fault of the machine, not the trial's (not counted)
CARRIED = ("budget", "rungs")  # attrs a new attempt takes over from the last one (successive halving)


def point_key(params: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The unit (grid point and repeat) a trial is an attempt at, as a hashable key (no `repeat` param: repeat 0)."""
    return (*grid_key(params), (REPEAT, str(repeat_of(params))))


def stage_trials(storage: BaseStorage, study_id: int) -> dict[tuple[tuple[str, str], ...], list[FrozenTrial]]:
    """Trials of a stage grouped by grid point, each group in trial-number order."""
    groups: dict[tuple[tuple[str, str], ...], list[FrozenTrial]] = {}
    for t in storage.get_all_trials(study_id, deepcopy=False):
        groups.setdefault(point_key(t.params), []).append(t)
    return groups


def failures(trials: list[FrozenTrial]) -> int:
    """Failed attempts that count against `max_retries`: not cancels, duplicates or the machine's faults, nor
    those before the point was re-opened (`counted_from`)."""
    since = max((t.user_attrs.get("counted_from", 0) for t in trials), default=0)
    return sum(
        t.state == TrialState.FAIL
        and t.number >= since
        and not str(t.user_attrs.get("reason", "")).startswith((CANCELLED, DUPLICATE, MACHINE))
        for t in trials
    )


def needs_attempt(trials: list[FrozenTrial], max_retries: int) -> bool:
    """Whether a grid point has no live or finished trial and retries left."""
    settled = {TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING}
    return not any(t.state in settled for t in trials) and failures(trials) <= max_retries


def resolved(trials: list[FrozenTrial], max_retries: int) -> bool:
    """A grid point is done: it completed, was stopped by successive halving, or failed more than `max_retries` times."""
    live = {TrialState.RUNNING, TrialState.WAITING}
    return any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) or (
        not any(t.state in live for t in trials) and failures(trials) > max_retries
    )


def enqueue(storage: BaseStorage, study_id: int, ws: Workspace, study: str, stage: str,
            grid: dict[str, tuple[str, ...]], units: list[Unit], max_retries: int, reopen: bool = False) -> None:  # fmt: skip
    """Enqueue every unit (grid point and repeat) that needs an attempt (call under `ws.claim_lock()`), and with
    `reopen` (retry_failed=true) every unit that failed more than `max_retries` times. Its folder is named by the
    point's index in the grid and the repeat (`Unit.folder`), so every attempt of it (and any re-run) finds the
    same folder."""
    groups = stage_trials(storage, study_id)
    distributions: dict[str, Any] = {k: CategoricalDistribution(list(v)) for k, v in grid.items()}
    distributions[REPEAT] = IntDistribution(
        0, max((u.repeat for u in units), default=0)
    )  # a range may grow between runs
    for unit in units:
        trials = groups.get(point_key(unit.params), [])
        reopened = reopen and resolved(trials, max_retries) and all(t.state == TrialState.FAIL for t in trials)
        if not reopened and not needs_attempt(trials, max_retries):
            continue
        attrs = {
            "attempt": 1 if reopened else failures(trials) + 1,
            "trial_dir": str(ws.trial_dir(study, stage, unit.folder)),
        }
        attrs |= {"counted_from": trials[-1].number + 1} if reopened else {}
        attrs |= {k: trials[-1].user_attrs[k] for k in CARRIED if trials and k in trials[-1].user_attrs}
        template = create_trial(
            state=TrialState.WAITING, params=unit.params, distributions=distributions, user_attrs=attrs
        )
        storage.create_new_trial(study_id, template_trial=template)
        crash_point("enqueued")


def claim(storage: BaseStorage, study_id: int) -> FrozenTrial | None:
    """Take the lowest-numbered WAITING trial (WAITING -> RUNNING is atomic in the storage); None if none left."""
    for t in sorted(
        storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)), key=lambda t: t.number
    ):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        if storage.set_trial_state_values(trial_id, TrialState.RUNNING):
            return storage.get_trial(trial_id)
    return None


def finish(
    storage: BaseStorage, study_id: int, number: int, state: TrialState, value: float | None, attrs: dict[str, Any]
) -> bool:
    """Record the end of a trial; False when another process finished it first (idempotent for the loser)."""
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    try:
        for key, v in attrs.items():
            storage.set_trial_user_attr(trial_id, key, v)
        return storage.set_trial_state_values(trial_id, state, None if value is None else [value])
    except UpdateFinishedTrialError:
        return False
