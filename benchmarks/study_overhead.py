"""Per-trial orchestration overhead of `sweeper run`: everything outside the training itself.

Runs a study through the CLI in a fresh temporary workspace (default: the README's first command,
`sweeper run study=mu_search preset=smoke`), then compares, for each trial, the wall time the orchestrator
saw (claimed -> finished in Optuna: process launch, imports, MLflow logging, bookkeeping, polling) with the
training time the trainer measured itself (result.json `duration_s`). Goals: < 2 s and < 5% per trial.

    python benchmarks/study_overhead.py [key=value ...]     e.g. train.iters=3 to shorten the trials
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        overrides = ["study=mu_search", "preset=smoke", f"workspace={ws}", *extra]
        env = {**os.environ, "TORCH_HOME": os.environ.get("TORCH_HOME", str(Path(tmp) / "torch_home"))}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sweeper.cli", "run", *overrides], check=True, env=env, stdout=subprocess.DEVNULL)
        total = time.perf_counter() - t0
        out = subprocess.run([sys.executable, "-m", "sweeper.cli", "status", "--format", "json", *overrides[:1], f"workspace={ws}"],
                             check=True, env=env, capture_output=True, text=True).stdout  # fmt: skip
        trials = [t for t in json.loads(out)["trials"] if t["state"] == "COMPLETE"]
        training = [json.loads((Path(t["trial_dir"]) / "result.json").read_text())["duration_s"] for t in trials]
    walls = [t["duration_s"] for t in trials]
    overhead = [w - d for w, d in zip(walls, training, strict=True)]
    print(f"study: {' '.join(overrides[:2] + extra)}  ({len(trials)} trials, {os.cpu_count()} CPUs visible)")
    print(f"whole command wall time:            {total:8.1f} s")
    print(f"training per trial (median):        {statistics.median(training):8.2f} s")
    print(f"orchestration overhead per trial:   {statistics.median(overhead):8.2f} s median, {max(overhead):.2f} s max  (goal < 2 s)")
    print(f"overhead / training (median trial): {statistics.median(o / d for o, d in zip(overhead, training, strict=True)):8.1%}  (goal < 5%)")


if __name__ == "__main__":
    main(sys.argv[1:])
