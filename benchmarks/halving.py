"""Successive halving against the full grid on the paper's alternating search (issue 12 goals).

Runs `sweeper run study=paper preset=smoke` with `scheduler=none` and with `scheduler=sha` side by side, each
in its own fresh workspace, one trial at a time with 1 intra-op thread per process, then prints from the
runs' cost ledgers (`sweeper status --format json`): the trial-iterations and device-seconds of each and their
ratio (goal: sha spends <= 40 % of the naive protocol's trial-iterations), how many iterations were trained
twice (goal 0: every promoted trial resumes from its checkpoint), the winners, and `sweeper rank-check` of the
`none` run. A scheduler the installed sweeper does not know yet is reported as skipped.

    python benchmarks/halving.py [--schedulers none,sha] [key=value ...]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sweeper(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sweeper.cli", *args], env=env, capture_output=True, text=True)


def main(argv: list[str]) -> None:
    schedulers = ["none", "sha"]
    if argv[:1] == ["--schedulers"]:
        schedulers, argv = argv[1].split(","), argv[2:]
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "TORCH_HOME": os.environ.get("TORCH_HOME", str(Path(tmp) / "torch_home")),
        }
        common = ["study=paper", "preset=smoke", "executor.n_jobs=1", "train.threads=1", *argv]
        runs, t0 = {}, time.perf_counter()
        for name in schedulers:  # side by side: both start now, each on its own core
            args = [
                "run",
                *common,
                f"workspace={Path(tmp) / name}",
                *([f"scheduler={name}"] if name != "none" else []),
            ]  # none: the default
            runs[name] = subprocess.Popen(
                [sys.executable, "-m", "sweeper.cli", *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        cost = {}
        for name, proc in runs.items():
            out, err = proc.communicate()
            if proc.returncode != 0:
                print(f"scheduler={name}: skipped ({(err.strip().splitlines() or ['failed'])[-1]})")
                continue
            winner = next((line for line in out.splitlines() if line.startswith("paper: winner")), "?")
            status = json.loads(
                sweeper("status", "study=paper", f"workspace={Path(tmp) / name}", "--format", "json", env=env).stdout
            )
            cost[name] = status["cost"][-1] | {"winner": winner}
        print(f"study=paper preset=smoke, schedulers {', '.join(schedulers)} side by side: {time.perf_counter() - t0:.0f} s wall, "
              f"{os.cpu_count()} CPUs (a shared machine: device-seconds vary with its load)")  # fmt: skip
        for name, c in cost.items():
            print(f"scheduler={name}: {c['gan_iters']} GAN trial-iterations of the naive {c['naive_gan_iters']} "
                  f"({c['gan_iters'] / c['naive_gan_iters']:.0%}), {c['pretrain_iters']} pre-training iterations, "
                  f"{c['device_s']:.0f} {c['unit']}, {c['repeated_iters']} iterations repeated (goal 0); {c['winner']}")  # fmt: skip
        if {"none", "sha"} <= cost.keys():
            none, sha = cost["none"], cost["sha"]
            print(f"sha / none: trial-iterations {sha['gan_iters'] / none['gan_iters']:.2f}, device-seconds {sha['device_s'] / none['device_s']:.2f}; "
                  f"sha / naive trial-iterations {sha['gan_iters'] / sha['naive_gan_iters']:.2f} (goal <= 0.40)")  # fmt: skip
        if "none" in cost:
            check = sweeper("rank-check", "study=paper", f"workspace={Path(tmp) / 'none'}", env=env)
            print("\nrank-check of the scheduler=none run:\n" + (check.stdout or check.stderr))


if __name__ == "__main__":
    main(sys.argv[1:])
