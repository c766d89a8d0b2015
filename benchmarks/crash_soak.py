"""Random-schedule soak of crash safety (issue 9): many short `sweeper run`s of small studies, each killed
at a random moment (SIGKILL as `kill -9`, or SIGINT as Ctrl-C), re-run until one finishes; then counts

- runs, kills: `sweeper run` processes started, and those ended by the soak;
- trials lost: grid points not settled (COMPLETE, or PRUNED by halving), or an attempt counted as failed;
- trials duplicated: a grid point settled twice, or a trial folder whose record repeats a trained iteration
  (two jobs in one folder, or a resume that trained an iteration again).

Both must be 0. Seeded, so a failure can be replayed.

    python benchmarks/crash_soak.py [--seed 0] [--studies 3] [--kills 6] [--max-wait-s 25] [--storage journal]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from sweeper.core.workspace import Workspace  # noqa: E402

STUDY = "description: crash soak\nconfig:\n  arch: srgan\n  beta: beta1_3\nstages:\n  - name: mu\n    grid:\n      mu: [0.5, 5, inf]\n"
SETTINGS = ["preset=smoke", "weights=random", "train.iters=6", "train.from_scratch=true", "train.milestones=[3]",
            "train.val_every=6", "train.ckpt_every=1", "train.log_every=1", "data.val_max_images=1",
            "model.num_feat=8", "model.num_blocks=1", "scheduler=sha", "max_retries=0", "executor.n_jobs=2"]  # fmt: skip


def soak_study(folder: Path, rng: random.Random, kills: int, max_wait_s: float, storage: str) -> dict[str, int]:
    """One study killed `kills` times at random moments, then run to its end; returns its counts."""
    ws = folder / "ws"
    url = {"sqlite": f"sqlite:///{ws}/optuna.db", "journal": f"journal://{ws}/optuna.journal"}[storage]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEPER_")}
    env |= {
        "SWEEPER_STUDIES": str(folder),
        "TORCH_HOME": str(folder / "torch_home"),
        "SWEEPER_LEASE_S": "2",
        "OMP_NUM_THREADS": "1",
    }
    (folder / "soak.yaml").write_text(STUDY)
    command = [sys.executable, "-m", "sweeper.cli", "run", "study=soak", f"workspace={ws}", f"storage={url}", *SETTINGS]
    counts = Counter(runs=0, kills=0)
    while True:
        proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        counts["runs"] += 1
        if counts["kills"] < kills:
            try:
                proc.wait(timeout=rng.uniform(0.5, max_wait_s))
            except subprocess.TimeoutExpired:
                proc.send_signal(rng.choice([signal.SIGKILL, signal.SIGINT]))
                counts["kills"] += 1
        _, err = proc.communicate(timeout=900)
        # An interrupted run says so and ends with 130, or (rarely, seen once in CI) by SIGINT itself after that
        # line, as CPython does when it exits on an interrupt: both are a clean end of an interrupted run.
        interrupted = proc.returncode in (130, -signal.SIGINT) and "re-run the same command to resume" in err
        if "Traceback" in err or not (proc.returncode in (0, -signal.SIGKILL) or interrupted):
            raise RuntimeError(f"run {counts['runs']} ended with {proc.returncode}:\n{err}")
        if proc.returncode == 0:
            break
    storage_obj = Workspace.resolve(str(ws), url, None).open_storage()
    trials = optuna.load_study(study_name="soak.mu", storage=storage_obj).get_trials(deepcopy=False)
    settled = Counter(t.params["mu"] for t in trials if t.state.name in ("COMPLETE", "PRUNED"))
    counted_failures = [
        t for t in trials if t.state.name == "FAIL" and not str(t.user_attrs.get("reason")).startswith("cancelled")
    ]
    repeated = 0
    for folder_ in {t.user_attrs["trial_dir"] for t in trials}:
        lines = (
            (Path(folder_) / "metrics.jsonl").read_text().splitlines()
            if (Path(folder_) / "metrics.jsonl").exists()
            else []
        )
        steps = [r["step"] for r in map(json.loads, lines) if r["kind"] == "train"]
        repeated += len(steps) != len(set(steps))
    counts["trials lost"] = sum(1 for mu in ("0.5", "5", "inf") if settled[mu] == 0) + len(counted_failures)
    counts["trials duplicated"] = sum(n - 1 for n in settled.values() if n > 1) + repeated
    return dict(counts)


def soak(seed: int, studies: int, kills: int, max_wait_s: float, storage: str) -> dict[str, int]:
    rng = random.Random(seed)
    total: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(studies):
            folder = Path(tmp) / f"study{i}"
            folder.mkdir()
            total.update(soak_study(folder, rng, kills, max_wait_s, storage))
    return {k: total[k] for k in ("runs", "kills", "trials lost", "trials duplicated")}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--kills", type=int, default=6, help="kills per study before it is let finish")
    parser.add_argument(
        "--max-wait-s", type=float, default=25.0, help="a run is killed after uniform(0.5, this) seconds"
    )
    parser.add_argument("--storage", choices=("sqlite", "journal"), default="journal")
    a = parser.parse_args()
    t0 = time.monotonic()
    counts = soak(a.seed, a.studies, a.kills, a.max_wait_s, a.storage)
    print(
        f"seed {a.seed}, {a.storage}: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + f" ({time.monotonic() - t0:.0f}s)"
    )
    sys.exit(0 if counts["trials lost"] == counts["trials duplicated"] == 0 else 1)
