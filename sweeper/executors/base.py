"""The executor interface shared by the local and SLURM executors.

An executor only starts jobs and says whether they are alive; the outcome of a trial is always read from
`trial_dir/result.json` by the orchestrator (see docs/ARCHITECTURE.md, "Trial folder").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

JOB_STATES = ("PENDING", "RUNNING", "ENDED", "UNKNOWN")


@dataclass(frozen=True)
class TrialJob:
    study: str  # study name, e.g. "mu_search"
    stage: str  # stage name, e.g. "mu"
    number: int  # Optuna trial number
    trial_dir: Path  # the trial folder (config.yaml already written there)


class Executor(Protocol):
    name: str  # "local" | "slurm"

    def slots(self) -> int:
        """How many trials may run at once."""
        ...

    def submit(self, jobs: list[TrialJob]) -> list[str]:
        """Start the jobs; return one job id per job, in order."""
        ...

    def state(self, job_id: str) -> str:
        """One of JOB_STATES: "PENDING" | "RUNNING" | "ENDED" | "UNKNOWN"."""
        ...

    def cancel(self, job_ids: list[str]) -> None:
        """Stop the jobs (ended or unknown ids are ignored)."""
        ...

    def log_paths(self, job_id: str) -> tuple[Path, Path]:
        """The job's stdout and stderr files."""
        ...
