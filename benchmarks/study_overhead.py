"""Per-trial orchestration overhead of `sweeper run`: everything outside the training itself.

Runs a study through the CLI in a fresh temporary workspace (default: the README's first command,
`sweeper run study=mu_search preset=smoke`) and splits each trial's wall time, as the orchestrator saw it
(Optuna: claimed -> COMPLETE), into
- launch: claimed -> `train()` starts in the worker (config.yaml rewritten by the trainer): writing the
  trial's config, forking the worker, imports;
- training: the `train()` call (config.yaml rewritten -> result.json written);
- finish: result.json written -> COMPLETE in Optuna: noticing the end, MLflow logging, bookkeeping.
Goals: launch + finish < 2 s per trial and < 5% of the trial.

    python benchmarks/study_overhead.py [key=value ...]     e.g. train.iters=3 for shorter trials
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna


def main(extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        overrides = ["study=mu_search", "preset=smoke", f"workspace={ws}", *extra]
        env = {**os.environ, "TORCH_HOME": os.environ.get("TORCH_HOME", str(Path(tmp) / "torch_home"))}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sweeper.cli", "run", *overrides], check=True, env=env, stdout=subprocess.DEVNULL)
        total = time.perf_counter() - t0
        storage = optuna.storages.get_storage(f"sqlite:///{ws / 'optuna.db'}")
        trials = storage.get_all_trials(storage.get_study_id_from_name("mu_search.mu"), states=(optuna.trial.TrialState.COMPLETE,))
        rows = []
        for t in trials:
            folder = Path(t.user_attrs["trial_dir"])
            started, ended = (folder / "config.yaml").stat().st_mtime, (folder / "result.json").stat().st_mtime
            assert t.datetime_start is not None and t.datetime_complete is not None  # COMPLETE trials have both
            rows.append((started - t.datetime_start.timestamp(), ended - started, t.datetime_complete.timestamp() - ended))
    print(f"sweeper run {' '.join(o for o in overrides if not o.startswith('workspace='))}: {len(trials)} trials, {os.cpu_count()} CPUs")
    print(f"whole command wall time: {total:.1f} s")
    print(f"{'trial':>5} {'launch s':>9} {'train s':>9} {'finish s':>9} {'overhead':>9}")
    for t, (launch, train, finish) in zip(trials, rows, strict=True):
        print(f"{t.number:>5} {launch:>9.2f} {train:>9.2f} {finish:>9.2f} {(launch + finish) / (launch + train + finish):>9.1%}")
    later = rows[1:] or rows  # trial 0 also starts the worker launcher (imports torch once for all trials)
    overhead = [launch + finish for launch, _, finish in later]
    share = [(launch + finish) / (launch + train + finish) for launch, train, finish in later]
    print(f"median over trials 1..: overhead {statistics.median(overhead):.2f} s per trial (goal < 2 s), "
          f"{statistics.median(share):.1%} of the trial (goal < 5%)")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
