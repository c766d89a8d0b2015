"""Faults of the machine (issue 19), as the state machine counts them: why an attempt failed and whether the
machine was to blame (`failure`: a full or failing disk, memory, a job killed or stalled, not the trial's settings;
no retry is spent), and the faults in a row after which a run launches nothing new and stops (`FaultStreak`,
`max_machine_faults`).

The state machine (`sweeper.search.machine`) ends the trials and says so; this module only tells and counts.
Imports `trainer` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainer.errors import UserError


class MachineHalt(UserError):
    """`max_machine_faults` attempts in a row ended by faults of the machine: the stage stops launching and ends."""


def failure(result: dict[str, Any] | None, stalled: dict[str, Any] | None, logs_cmd: str) -> tuple[str, bool]:
    """Why an ended job's attempt failed, and whether the machine was to blame: a job killed for stalling
    (`stalled`), a result with `"fault": "machine"`, or no result at all (`logs_cmd` shows the job's output)."""
    reason = (stalled or result or {}).get("reason") or (
        f"the job ended without a result (killed: out of memory, kill -9 or a lost node; `{logs_cmd}`)"
    )
    return reason, result is None or result.get("fault") == "machine" or stalled is not None


@dataclass
class FaultStreak:
    """The reasons of the attempts ended in a row by the machine's faults (a trial's own end clears them)."""

    limit: int  # max_machine_faults
    reasons: list[str] = field(default_factory=list)

    def halted(self) -> bool:
        """Whether `limit` attempts in a row ended by the machine's faults: no new job is launched."""
        return len(self.reasons) >= self.limit

    def halt(self) -> MachineHalt:
        """The stop, saying why and what to do."""
        return MachineHalt(
            f"stopped: {len(self.reasons)} trials in a row could not run for a fault of the "
            f"machine, not of their settings (no retry spent); the last: {self.reasons[-1]}. "
            "Re-run the same command to resume once it is fixed"
        )
