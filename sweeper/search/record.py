"""A stage's Optuna record as one sweeper process reads and writes it: its trials by state, one trial, user attrs
written to a RUNNING trial (`Settled` when another process finished the trial meanwhile: `sweeper cancel`, or a
sweeper that adopted it), and whether a trial duplicates an earlier one. Which attrs to write, and when, is the state
machine's (`sweeper.search.machine`); the primitives that move a trial between Optuna's states (enqueue, claim,
finish) are `sweeper.core.workspace`'s. Imports `sweeper.core`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from sweeper.core.workspace import point_key, stage_trials

LIVE_PHASES = ("claimed", "launching", "launched")  # RUNNING trials that hold (or are about to hold) a job slot


class Settled(Exception):
    """The trial was finished by another process (`sweeper cancel`, or a sweeper that adopted it) meanwhile."""


def phase(t: FrozenTrial) -> str:
    """A RUNNING trial's phase (docs/ARCHITECTURE.md, "The trial state machine"): claimed until it has one."""
    return t.user_attrs.get("phase", "claimed")


@dataclass
class StageRecord:
    """The Optuna study `study_id` of one stage in `storage`."""

    storage: BaseStorage
    study_id: int

    def trials(self, *states: TrialState) -> list[FrozenTrial]:
        """The stage's trials in `states` (all when none), not copied."""
        return self.storage.get_all_trials(self.study_id, deepcopy=False, states=states or None)

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def fetch(self, number: int) -> FrozenTrial:
        return self.storage.get_trial(self.trial_id(number))

    def set_attrs(self, number: int, **attrs: Any) -> None:
        """Write user attrs of a RUNNING trial; Settled when another process finished it meanwhile."""
        trial_id = self.trial_id(number)
        try:
            for key, value in attrs.items():
                self.storage.set_trial_user_attr(trial_id, key, value)
        except UpdateFinishedTrialError:
            raise Settled(number) from None

    def duplicate(self, t: FrozenTrial) -> bool:
        """Whether an earlier trial of t's unit is live or settled (two racing sweepers enqueued the unit twice)."""
        earlier = [
            e for e in stage_trials(self.storage, self.study_id).get(point_key(t.params), []) if e.number < t.number
        ]
        return any(
            e.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING) for e in earlier
        )
