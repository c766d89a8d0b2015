"""The paths a newcomer takes (issue 22), end to end through the CLI in a real pseudo-terminal: a data root
with T91, BSD200, Set5, Set14 and BSD100 and no sets named; the stage and trial bars; the first lines saying
what is trained and validated on; the trial's loss lines in `sweeper logs`; a re-run with another setting
refused naming it; the stage's table holding the three validation sets."""

from __future__ import annotations

import csv
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

TINY = [
    "preset=smoke",
    "train.iters=2",
    "train.milestones=[1]",
    "train.val_every=2",
    "train.ckpt_every=2",
    "train.log_every=1",
]


def in_pty(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """`sweeper ARGS` in a pseudo-terminal opened by `script` from a non-terminal (0x0: the case that drew nothing)."""
    typescript = cwd / "typescript"
    command = shlex.join([sys.executable, "-m", "sweeper.cli", *args])
    done = subprocess.run(["script", "-qfec", command, str(typescript)], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=900)  # fmt: skip
    return done.returncode, typescript.read_text(errors="replace")


@pytest.mark.slow
def test_a_smoke_run_on_a_data_root_in_a_terminal(shared_data: Path, tmp_path: Path) -> None:
    if subprocess.run(["which", "script"], capture_output=True).returncode:
        pytest.skip("util-linux `script` is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEPER_") and k not in ("COLUMNS", "LINES")}
    env |= {"TORCH_HOME": str(tmp_path / "torch_home")}
    ws = tmp_path / "ws"
    args = ["run", "study=mu_search", *TINY, f"data.root={shared_data}", f"workspace={ws}"]
    rc, text = in_pty(args, tmp_path, env)
    assert rc == 0, text[-3000:]
    assert (
        "train: T91, BSD200 (" in text
        and "; validate: Set5, Set14, BSD100 (first 2 images of each, 64-px centre crops)" in text
    )
    assert "mu_search.mu:" in text and "/7 [" in text  # the stage bar: grid points done of 7, with its clock
    assert "  #0 mu=0.2" in text  # a running trial's bar

    logs = subprocess.run([sys.executable, "-m", "sweeper.cli", "logs", "study=mu_search", "trial=0", f"workspace={ws}"],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert logs.returncode == 0 and "gan 1/2: l_g " in logs.stdout and "gan 2/2: l_g " in logs.stdout, logs.stdout

    other = subprocess.run([sys.executable, "-m", "sweeper.cli", *args, "data.train_sets=[T91]"], env=env, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert other.returncode == 2
    assert 'data.train_sets ["T91", "BSD200"] then, ["T91"] now' in other.stderr and "workspace=" in other.stderr, (
        other.stderr
    )

    (table,) = (ws / "artifacts").glob("mu_search/*/artifacts/results/table1_mu_srgan.csv")  # the stage's Table 1
    with open(table) as f:
        header = next(csv.reader(f))
    assert sorted({c.split("/")[0] for c in header[1:] if c != "provenance"}) == ["BSD100", "Set14", "Set5"]
