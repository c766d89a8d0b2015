"""Per-trial orchestration overhead of `sweeper run`: everything outside the training itself.

Runs a study through the CLI in a fresh temporary workspace (default: the README's first command,
`sweeper run study=mu_search preset=smoke`) and splits each trial's wall time, as the orchestrator saw it
(Optuna: claimed -> COMPLETE), into
- launch: claimed -> `train()` starts in the worker (config.yaml rewritten by the trainer): writing the
  trial's config, forking the worker, imports, building the config;
- training: the `train()` call (config.yaml rewritten -> result.json written), networks and LPIPS included;
- finish: result.json written -> COMPLETE in Optuna: noticing the end, MLflow logging, bookkeeping.
Goals: launch + finish < 2 s per trial and < 5% of the trial.

`--base REV` measures side by side: the same study with the code of REV (a temporary git worktree) and with
this checkout, alternating A, B, A, B ... for `--rounds` rounds (other load on a shared machine hits both
alike), each run with one intra-op thread per trial, and prints per round and as medians each version's
overhead and trial time, and their ratios B/A. `--lpips` puts a random-init AlexNet file under the run's
TORCH_HOME so that LPIPS is built as it is with the real ImageNet weights (its values mean nothing: a timing
aid only; every other extractor stays random, as in smoke runs without weights).

    python benchmarks/study_overhead.py [key=value ...]                  e.g. train.iters=3 for shorter trials
    python benchmarks/study_overhead.py --base main --rounds 3 [--lpips] [key=value ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Measured:
    total_s: float  # the whole command
    rows: list[tuple[int, float, float, float]]  # per trial: number, launch, training, finish (seconds)

    def later(self) -> list[tuple[int, float, float, float]]:
        """Trials 1..: trial 0 also starts the worker launcher (imports torch once for all trials)."""
        return self.rows[1:] or self.rows

    def overhead_s(self) -> float:
        return statistics.median(launch + finish for _, launch, _, finish in self.later())

    def trial_s(self) -> float:
        return statistics.median(launch + train + finish for _, launch, train, finish in self.later())

    def share(self) -> float:
        return statistics.median(
            (launch + finish) / (launch + train + finish) for _, launch, train, finish in self.later()
        )


def plant_random_alexnet(torch_home: Path) -> None:
    """A random-init AlexNet where torchvision's ImageNet file is looked for, so LPIPS is built (timing only)."""
    import torch
    import torchvision

    from trainer.weight_files import FILES

    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.alexnet().state_dict(), folder / FILES["alexnet"].name)


def measure(code: Path, overrides: list[str], lpips: bool) -> Measured:
    """One `sweeper run` of `overrides` with the sweeper and trainer of folder `code`, in a fresh workspace."""
    with tempfile.TemporaryDirectory() as tmp:
        ws, torch_home = Path(tmp) / "ws", Path(tmp) / "torch_home"
        if lpips:
            plant_random_alexnet(torch_home)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEPER_")}
        env |= {"TORCH_HOME": str(torch_home), "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        command = [sys.executable, "-m", "sweeper.cli", "run", *overrides, f"workspace={ws}", "train.threads=1"]
        subprocess.run(command, check=True, env=env, cwd=tmp, stdout=subprocess.DEVNULL)
        total = time.perf_counter() - t0
        storage = optuna.storages.get_storage(f"sqlite:///{ws / 'optuna.db'}")
        study = next(s.study_name for s in storage.get_all_studies())
        complete = (optuna.trial.TrialState.COMPLETE,)
        rows = []
        for t in storage.get_all_trials(storage.get_study_id_from_name(study), states=complete):
            folder = Path(t.user_attrs["trial_dir"])
            started, ended = (folder / "config.yaml").stat().st_mtime, (folder / "result.json").stat().st_mtime
            assert t.datetime_start is not None and t.datetime_complete is not None  # COMPLETE trials have both
            claimed, completed = t.datetime_start.timestamp(), t.datetime_complete.timestamp()
            rows.append((t.number, started - claimed, ended - started, completed - ended))
    return Measured(total, rows)


def print_one(m: Measured) -> None:
    print(f"whole command wall time: {m.total_s:.1f} s")
    print(f"{'trial':>5} {'launch s':>9} {'train s':>9} {'finish s':>9} {'overhead':>9}")
    for number, launch, train, finish in m.rows:
        print(
            f"{number:>5} {launch:>9.2f} {train:>9.2f} {finish:>9.2f} {(launch + finish) / (launch + train + finish):>9.1%}"
        )
    print(f"median over trials 1..: overhead {m.overhead_s():.2f} s per trial (goal < 2 s), "
          f"{m.share():.1%} of the trial (goal < 5%)")  # fmt: skip


def side_by_side(base: str, rounds: int, overrides: list[str], lpips: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(old), base], check=True)
        try:
            runs: dict[str, list[Measured]] = {"A": [], "B": []}
            for r in range(rounds):
                for name, code in (("A", old), ("B", REPO)):
                    runs[name].append(measure(code, overrides, lpips))
                a, b = runs["A"][-1], runs["B"][-1]
                print(f"round {r + 1}: overhead/trial A {a.overhead_s():.2f} s ({a.share():.1%}) B {b.overhead_s():.2f} s "
                      f"({b.share():.1%}) B/A {b.overhead_s() / a.overhead_s():.2f}; trial A {a.trial_s():.2f} s "
                      f"B {b.trial_s():.2f} s B/A {b.trial_s() / a.trial_s():.2f}; command A {a.total_s:.1f} s "
                      f"B {b.total_s:.1f} s B/A {b.total_s / a.total_s:.2f}", flush=True)  # fmt: skip
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=True)
    for what, get in (("overhead per trial", Measured.overhead_s), ("overhead share", Measured.share),
                      ("trial wall time", Measured.trial_s), ("command wall time", lambda m: m.total_s)):  # fmt: skip
        old_values, new_values = ([get(m) for m in runs[k]] for k in "AB")
        ratios = [y / x for x, y in zip(old_values, new_values, strict=True)]
        unit = "" if what == "overhead share" else " s"
        fmt = (lambda v: f"{v:.1%}") if what == "overhead share" else (lambda v: f"{v:.2f}")
        print(f"{what:>19}: A ({base}) median {fmt(statistics.median(old_values))}{unit}, B (this checkout) median "
              f"{fmt(statistics.median(new_values))}{unit}; B/A per round {', '.join(f'{x:.2f}' for x in ratios)} "
              f"(median {statistics.median(ratios):.2f}, spread {min(ratios):.2f}-{max(ratios):.2f})")  # fmt: skip


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="a git revision to compare with, side by side (A = it, B = this checkout)")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds with --base")
    parser.add_argument("--lpips", action="store_true", help="build LPIPS (random-init AlexNet, timing only)")
    args, extra = parser.parse_known_args(argv)
    overrides = ["study=mu_search", "preset=smoke", *extra]
    print(f"sweeper run {' '.join(overrides)}: {os.cpu_count()} CPUs, 1 thread per trial"
          f"{', LPIPS built (random AlexNet)' if args.lpips else ''}")  # fmt: skip
    if args.base:
        side_by_side(args.base, args.rounds, overrides, args.lpips)
    else:
        print_one(measure(REPO, overrides, args.lpips))


if __name__ == "__main__":
    main(sys.argv[1:])
