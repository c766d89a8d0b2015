"""The executor interface shared by the local and SLURM executors.

An executor only starts jobs and says whether they are alive; the outcome of a trial is always read from
the trial folder by the orchestrator (see docs/ARCHITECTURE.md, "Trial folder"). Every job is started with
a launch token, recorded on the trial before the job is submitted, so a sweeper killed between submitting
and recording the job id finds the job again (`find`) instead of starting a second one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

JOB_STATES = ("PENDING", "RUNNING", "ENDED", "UNKNOWN")


@dataclass(frozen=True)
class TrialJob:
    study: str  # study name, e.g. "mu_search"
    stage: str  # stage name, e.g. "mu"
    number: int  # Optuna trial number
    trial_dir: Path  # the trial folder (config.yaml and budget.json already written there)
    token: str  # launch token: `<batch>.<index in the batch>`, unique per launch


class Executor(Protocol):
    name: str  # "local" | "slurm"

    def slots(self) -> int:
        """How many trials may run at once."""
        ...

    def check(self, sqlite_file: Path | None) -> None:
        """Before a run creates anything: fail (UserError) on settings this executor cannot run with."""
        ...

    def submit(self, jobs: list[TrialJob]) -> list[str]:
        """Start the jobs (each told its token); return one job id per job, in order."""
        ...

    def find(self, token: str) -> str | None:
        """The id of the job started with this launch token, None when there never was one."""
        ...

    def state(self, job_id: str) -> str:
        """One of JOB_STATES: "PENDING" | "RUNNING" | "ENDED" | "UNKNOWN"."""
        ...

    def cancel(self, job_ids: list[str]) -> None:
        """Stop the jobs (ended or unknown ids are ignored); a job that still moves checkpoints first."""
        ...

    def kill(self, job_ids: list[str]) -> None:
        """Stop the jobs however stuck they are (a stalled job, which never reaches a checkpoint), all of their
        processes (ranks, data workers) with them."""
        ...

    def log_paths(self, job_id: str) -> tuple[Path, Path]:
        """The job's stdout and stderr files."""
        ...


def stop(executor: Executor, job_ids: list[str], wait_s: float = 60.0) -> None:
    """Cancel the jobs (each checkpoints first) and wait up to `wait_s` for them to end."""
    if job_ids:
        executor.cancel(job_ids)
        end = time.monotonic() + wait_s
        while time.monotonic() < end and any(executor.state(j) == "RUNNING" for j in job_ids):
            time.sleep(0.1)
