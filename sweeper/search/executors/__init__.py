"""Executors run trial jobs: `make_executor("local" | "slurm", options, workspace)`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sweeper.search.executors.base import Executor, TrialJob, stop
from trainer.errors import UserError

EXECUTORS = ("local", "slurm")

__all__ = ["EXECUTORS", "Executor", "TrialJob", "make_executor", "stop"]


def make_executor(name: str, options: dict[str, Any], workspace: Path, preset: str = "paper") -> Executor:
    """The executor called `name`, configured by its `executor.<key>=value` options (SLURM defaults per preset)."""
    if name == "local":
        from sweeper.search.executors.local import LocalExecutor

        return LocalExecutor.from_options(options, workspace)
    if name == "slurm":
        from sweeper.search.executors.slurm import SlurmExecutor

        return SlurmExecutor.from_options(options, workspace, preset)
    raise UserError(f"executor={name!r} is not valid; choose one of {', '.join(EXECUTORS)}")
