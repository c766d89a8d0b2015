"""Live curves (issue 22): a running trial's training-log lines (metrics.jsonl: losses, lr, step time, one every
`train.log_every` steps) forwarded to its MLflow run while it trains, by the orchestrator (trials write files
only). The run is created, with the trial's tags, at its first progress and completed at its end (`LiveCurves.log`,
by `tracking.log_trial`); the run's own last step is where forwarding goes on after a restart, so no step is logged
twice, even when a resumed job writes the steps after its checkpoint again. The state machine
(`sweeper.search.machine`) says when; this module writes MLflow only. Imports `sweeper.core` and
`sweeper.search.tracking`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from mlflow import MlflowClient
from optuna.trial import FrozenTrial

from sweeper.core.repeats import repeat_of
from sweeper.search import tracking
from trainer.files import file_lock

LIVE_EVERY_S = float(os.environ.get("SWEEPER_LIVE_S", "5"))  # a running trial's new log lines go to MLflow this often


@dataclass
class LiveRun:
    """The MLflow run of a trial this process forwards training-log lines to."""

    run_id: str | None  # None: the run is complete already (another sweeper logged it)
    step: int  # the last training-log step the run holds
    seen: tuple[int, int] = (-1, -1)  # metrics.jsonl's (size, mtime) when last read
    at: float = 0.0  # time.monotonic() of that read


class LiveCurves:
    """The runs of one stage's trials (trial number -> its live run) in `experiment_id`, nested under `parent`;
    `tags`: the stage's (each trial's run adds its own)."""

    def __init__(self, client: MlflowClient, experiment_id: str, parent: str, tags: dict[str, str]) -> None:
        self.client, self.experiment_id, self.parent, self.stage_tags = client, experiment_id, parent, tags
        self.runs: dict[int, LiveRun] = {}

    def tags(self, t: FrozenTrial) -> dict[str, str]:
        """The tags of trial t's MLflow run that the sweeper knows (the result adds its own)."""
        attrs = t.user_attrs
        extra = {"sweeper.reused_from": attrs["reused_from"]} if "reused_from" in attrs else {}
        if "slurm_job_id" in attrs:
            extra["sweeper.slurm_job_id"] = attrs["slurm_job_id"]
        return {**self.stage_tags, "sweeper.trial_number": str(t.number), "sweeper.repeat": str(repeat_of(t.params)),
                **extra}  # fmt: skip

    def forward(self, t: FrozenTrial, trial_dir: Path, now: bool = False) -> None:
        """Trial t's new lines to its run (created at its first progress): at most every LIVE_EVERY_S, at once when
        its job ended (`now`)."""
        number = t.number
        live = self.runs.get(number)
        if live is not None and (live.run_id is None or (not now and time.monotonic() - live.at < LIVE_EVERY_S)):
            return
        if live is None and not (trial_dir / "progress.json").exists():
            return  # not training yet
        log = trial_dir / "metrics.jsonl"
        seen = (log.stat().st_size, log.stat().st_mtime_ns) if log.exists() else (0, 0)
        if live is not None and live.seen == seen:
            live.at = time.monotonic()
            return
        with file_lock(trial_dir / ".finish.lock"):  # one writer per run, as the trial's final logging
            if live is None:
                config = yaml.safe_load((trial_dir / "config.yaml").read_text())
                found = tracking.live_run(self.client, self.experiment_id, self.parent, trial_dir, config, self.tags(t))
                live = self.runs[number] = LiveRun(*found) if found else LiveRun(None, 0)
            if live.run_id is not None:
                stamp = seen[1] // 1_000_000  # for lines written before they carried their time
                live.step = tracking.forward(
                    self.client, live.run_id, tracking.log_records(trial_dir), live.step, stamp
                )
        live.seen, live.at = seen, time.monotonic()

    def log(self, t: FrozenTrial, trial_dir: Path, stopped_at: int | None = None) -> str:
        """Trial t's end logged to its run (the live one, found by its trial key, else created), completed; its id."""
        config = yaml.safe_load((trial_dir / "config.yaml").read_text())
        tags = self.tags(t)
        with file_lock(trial_dir / ".finish.lock"):  # two sweepers that adopted the trial at once log one run
            return tracking.log_trial(self.client, self.experiment_id, self.parent, trial_dir, config, tags, stopped_at)

    def end(self, number: int, failed: bool = False) -> None:
        """Trial `number` ended (its run FAILED when the attempt failed: a new attempt sets it RUNNING again)."""
        live = self.runs.pop(number, None)
        if failed and live is not None and live.run_id is not None:
            self.client.set_terminated(live.run_id, "FAILED")

    def interrupt(self) -> None:
        """Ctrl-C: every live run KILLED (a re-run sets them RUNNING again)."""
        for live in self.runs.values():
            if live.run_id is not None:
                self.client.set_terminated(live.run_id, "KILLED")
