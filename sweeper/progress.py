"""Live progress of a stage: a study bar (grid points done / total, rate, ETA) and one bar per running trial,
read from each trial's progress.json (written by the trainer every few seconds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from sweeper.workspace import resolved


def read_progress(trial_dir: Path) -> dict[str, Any]:
    try:
        progress = json.loads((trial_dir / "progress.json").read_text())
    except (OSError, ValueError):
        return {}
    return progress if isinstance(progress, dict) else {}


def show(bar: tqdm, progress: dict[str, Any]) -> None:
    """Move a trial's bar to what its progress.json says (stage, step of total)."""
    if progress:
        bar.total = progress.get("total")
        bar.set_postfix_str(str(progress.get("stage", "")), refresh=False)
        bar.update(int(progress.get("step", 0)) - bar.n)


class StageProgress:
    def __init__(self, name: str, total: int) -> None:
        self.bar = tqdm(total=total, desc=name, unit="trial", disable=None, dynamic_ncols=True)
        self.trial_bars: dict[int, tqdm] = {}

    def update(self, groups: dict[Any, list[FrozenTrial]], max_retries: int) -> None:
        done = sum(resolved(trials, max_retries) for trials in groups.values())
        self.bar.update(done - self.bar.n)
        running = {t.number: t for trials in groups.values() for t in trials if t.state == TrialState.RUNNING}
        for number in set(self.trial_bars) - set(running):
            self.trial_bars.pop(number).close()
        for number, t in running.items():
            p = read_progress(Path(t.user_attrs.get("trial_dir", ".")))
            if number not in self.trial_bars:
                params = " ".join(f"{k}={v}" for k, v in t.params.items())
                self.trial_bars[number] = tqdm(desc=f"  #{number} {params}", unit="it", leave=False, disable=self.bar.disable)
            show(self.trial_bars[number], p)

    def close(self) -> None:
        for bar in self.trial_bars.values():
            bar.close()
        self.bar.close()
