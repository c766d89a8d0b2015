"""Live progress of a stage, and whether a RUNNING trial still has a process behind it.

On a terminal: a study bar (grid points resolved / total, reused and finished ones included) and one bar
per running trial, read from each trial's progress.json (written by the trainer every few seconds). Elsewhere
(a log file, SLURM, CI): one line per trial event (started, finished, reused, failed) and, at most every
`EVERY_S` seconds, a line with the stage's count, rate, ETA and each running trial's step.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from sweeper.core.workspace import resolved, workspace_of
from trainer.files import read_json
from trainer.terminal import bar

EVERY_S = 30.0  # seconds between two progress lines when stdout is not a terminal


def read_progress(trial_dir: Path) -> dict[str, Any]:
    return read_json(trial_dir / "progress.json") or {}


def where(progress: dict[str, Any]) -> str:
    """A trial's place as its progress.json says: `gan 120/400`, `gan 120/400 (validating Set5)`, or what it
    waits for before training (`waiting for a GPU slot`)."""
    step = f"{progress['stage']} {progress.get('step', 0)}/{progress.get('total', '?')}" if "stage" in progress else ""
    doing = progress.get("doing")
    return f"{step} ({doing})" if step and doing else step or doing or ""


def show(trial_bar: tqdm, progress: dict[str, Any]) -> None:
    """Move a trial's bar to what its progress.json says (stage, step of total; tqdm adds rate and ETA)."""
    if progress:
        trial_bar.total = progress.get("total")
        doing = f" ({progress['doing']})" if progress.get("doing") else ""
        trial_bar.set_postfix_str(f"{progress.get('stage', '')}{doing}", refresh=False)
        trial_bar.update(int(progress.get("step", 0)) - trial_bar.n)


def duration(seconds: float) -> str:
    """12s, 4m05s, 2h10m."""
    s = int(seconds)
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def params_of(t: FrozenTrial) -> str:
    return " ".join(f"{k}={v}" for k, v in t.params.items())


def event(t: FrozenTrial) -> str:
    """What happened to a trial, as its line in a log: started, complete (metrics), reused, failed (reason)."""
    attrs = t.user_attrs
    if t.state == TrialState.RUNNING:
        return f"started (attempt {attrs.get('attempt', 1)})"
    if t.state == TrialState.COMPLETE:
        means = " ".join(f"{k[5:]} {v:.4f}" for k, v in attrs.get("metrics", {}).items() if k.startswith("mean/"))
        took = f" in {duration(attrs['duration_s'])}" if attrs.get("duration_s") else ""
        return f"reused {attrs['reused_from']} ({means})" if "reused_from" in attrs else f"complete{took} ({means})"
    return f"{t.state.name.lower()}: {attrs.get('reason', '')}"


class StageProgress:
    def __init__(self, name: str, total: int) -> None:
        self.name = name
        self.total = total
        self.bar: tqdm | None = None  # made at the first update, starting at the points resolved before this command
        self.trial_bars: dict[int, tqdm] = {}
        self.lines = not sys.stderr.isatty()  # no terminal (where tqdm draws): progress as lines on stdout
        self.seen: dict[int, TrialState] = {}  # trial number -> state last reported
        self.start = time.monotonic()
        self.first_done: int | None = None  # points already resolved when this command began
        self.last_line = self.start
        self.done = 0
        self.running: dict[int, FrozenTrial] = {}

    def update(self, groups: dict[Any, list[FrozenTrial]], max_retries: int) -> None:
        done = sum(resolved(trials, max_retries) for trials in groups.values())
        self.first_done = done if self.first_done is None else self.first_done
        running = {t.number: t for trials in groups.values() for t in trials if t.state == TrialState.RUNNING}
        if self.lines:
            self.print_lines(groups, running, done)
            return
        if self.bar is None:  # its rate and ETA count only what this command resolves
            self.bar = bar(total=self.total, initial=done, desc=self.name, unit="trial")
        for t in sorted((t for trials in groups.values() for t in trials), key=lambda t: t.number):
            if t.state not in (TrialState.WAITING, TrialState.RUNNING) and self.seen.get(t.number) != t.state:
                self.seen[t.number] = t.state  # a finished trial's line, printed above the bars
                tqdm.write(f"[{self.name}] trial {t.number} {params_of(t)}: {event(t)}")
        self.bar.update(done - self.bar.n)
        for number in set(self.trial_bars) - set(running):
            self.trial_bars.pop(number).close()
        for number, t in running.items():
            p = read_progress(Path(t.user_attrs.get("trial_dir", ".")))
            if number not in self.trial_bars:
                self.trial_bars[number] = bar(desc=f"  #{number} {params_of(t)}", unit="it", leave=False)
            show(self.trial_bars[number], p)

    def print_lines(self, groups: dict[Any, list[FrozenTrial]], running: dict[int, FrozenTrial], done: int) -> None:
        """A line per trial event since the last call, and a progress line every EVERY_S seconds."""
        for t in sorted((t for trials in groups.values() for t in trials), key=lambda t: t.number):
            if t.state != TrialState.WAITING and self.seen.get(t.number) != t.state:
                self.seen[t.number] = t.state
                print(f"[{self.name}] trial {t.number} {params_of(t)}: {event(t)}", flush=True)
        self.done, self.running = done, running
        if time.monotonic() - self.last_line >= EVERY_S:
            self.last_line = time.monotonic()
            print(f"[{self.name}] {self.summary()}", flush=True)

    def summary(self) -> str:
        """`3/7 trials done, 2 running, 0.8 trials/min, ETA 5m00s, 4m10s elapsed; #3 gan 120/400 ...`."""
        done, running = self.done, self.running
        elapsed = time.monotonic() - self.start
        fresh = done - (self.first_done or 0)  # resolved by this command; none yet: no rate to tell
        pace = ""
        if fresh and elapsed > 0:
            rate = fresh / elapsed * 60
            pace = f", {rate:.1f} trials/min" + (
                f", ETA {duration((self.total - done) / rate * 60)}" if done < self.total else ""
            )
        steps = []
        for number, t in sorted(running.items()):
            p = read_progress(Path(t.user_attrs.get("trial_dir", ".")))
            steps.append(f"#{number} {where(p) or 'starting'}")
        text = f"{done}/{self.total} trials done, {len(running)} running{pace}, {duration(elapsed)} elapsed"
        return text + ("; " + ", ".join(steps) if steps else "")

    def close(self) -> None:
        if self.lines:
            print(f"[{self.name}] {self.summary()}", flush=True)
        for b in [*self.trial_bars.values(), *([self.bar] if self.bar else [])]:
            b.close()


def trial_states(storage: BaseStorage, study: str) -> list[tuple[str, int, str]]:
    """(stage, trial number, state) of every trial of `study`: equal before and after a command = it did nothing."""
    return [(s.study_name, t.number, t.state.name) for s in storage.get_all_studies() if s.study_name.startswith(f"{study}.")
            for t in storage.get_all_trials(storage.get_study_id_from_name(s.study_name), deepcopy=False)]  # fmt: skip


def job_gone(attrs: dict[str, Any]) -> bool:
    """Whether the job of a RUNNING trial has ended without the trial being finished (its sweeper died, or
    was detached): its local process is gone (pid and start time in the job record), or SLURM no longer runs it."""
    job_id = attrs.get("job_id")
    if not job_id or "trial_dir" not in attrs:
        return False  # claimed a moment ago, not launched yet
    if attrs.get("executor") == "slurm":
        from sweeper.search.executors.slurm import PENDING, RUNNING, squeue

        rows = squeue(job_id.split("_")[0])
        return rows is not None and rows.get(job_id) not in PENDING | RUNNING
    from sweeper.search.executors.local import LocalExecutor

    return LocalExecutor(1, 0, workspace_of(Path(attrs["trial_dir"]))).state(job_id) == "ENDED"
