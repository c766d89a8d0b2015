"""Helpers for the cluster tests (test_slurm, test_postgres, test_workers): the `sweeper` CLI in a
subprocess, a tiny study file, a throwaway PostgreSQL, and checks of the Optuna and MLflow record."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from sweeper.core.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
# The smoke preset cut to a few seconds of training per trial (the embedded dataset, random extractor weights).
TINY = ["preset=smoke", "weights=random", "train.iters=2", "train.pretrain_iters=1", "train.milestones=[1]",
        "train.pretrain_milestones=[1]", "train.val_every=2", "train.ckpt_every=1", "data.val_max_images=1"]  # fmt: skip


def tiny(*overrides: str) -> list[str]:
    """TINY with some settings replaced: tiny("train.iters=8")."""
    keys = {o.split("=")[0] for o in overrides}
    return [a for a in TINY if a.split("=")[0] not in keys] + list(overrides)


def env_for(tmp_path: Path) -> dict[str, str]:
    """The test's environment: its own study folder, no ImageNet weights, no inherited SWEEPER_* settings."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("SWEEPER_")}
    return out | {"SWEEPER_STUDIES": str(tmp_path / "studies"), "TORCH_HOME": str(tmp_path / "torch_home")}


def write_study(tmp_path: Path, name: str, mus: list[str]) -> None:
    """A one-stage study over `mu` (beta fixed), in the folder `env_for` points $SWEEPER_STUDIES at."""
    folder = tmp_path / "studies"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(
        f"description: cluster test grid\nconfig:\n  arch: srgan\n  beta: beta1_3\n"
        f"stages:\n  - name: mu\n    grid:\n      mu: [{', '.join(mus)}]\n"
    )


def all_cores() -> None:
    """In a child before exec: every core of the machine again (for daemons started from a pinned test worker,
    see conftest.py)."""
    os.sched_setaffinity(0, range(os.cpu_count() or 1))


def sweeper_args(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "sweeper.cli", *args]


def ctrl_c_works() -> None:
    """In the child before exec: SIGINT back to its default, as in a terminal. A shell that starts the test
    suite in the background ignores SIGINT for it, children inherit that, and Python then never raises
    KeyboardInterrupt (the Ctrl-C crash tests would see runs that cannot be interrupted)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def sweeper(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sweeper_args(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, preexec_fn=ctrl_c_works
    )


def status(study: str, extra: list[str], env: dict[str, str]) -> dict:
    done = sweeper(["status", f"study={study}", *extra, "--format", "json"], env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def trials(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    opened = Workspace.resolve(None, storage, None).open_storage()  # the sweeper's own way to open a storage URL
    return optuna.load_study(study_name=f"{study}.mu", storage=opened).get_trials(deepcopy=False)


def assert_grid_once(storage: str, tracking_uri: str, study: str, mus: list[str]) -> list[optuna.trial.FrozenTrial]:
    """Every grid point has exactly one COMPLETE trial and nothing failed; MLflow holds exactly one run per
    point, each the run recorded on its Optuna trial. Returns the complete trials."""
    all_trials = trials(storage, study)
    complete = [t for t in all_trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert Counter(t.params["mu"] for t in complete) == Counter(mus), [
        (t.number, t.state.name, t.params) for t in all_trials
    ]
    assert not [t for t in all_trials if t.state == optuna.trial.TrialState.FAIL], [
        t.user_attrs.get("reason") for t in all_trials
    ]
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(study).experiment_id], "tags.`sweeper.kind` = 'trial'")
    assert sorted(r.info.run_id for r in runs) == sorted(t.user_attrs["mlflow_run_id"] for t in complete)
    return complete


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL 15 cluster (scripts/pg-local): yields its SQLAlchemy URL, skips when it cannot start."""
    started = subprocess.run([REPO / "scripts" / "pg-local", "start"], capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        pytest.skip(f"PostgreSQL could not be started by scripts/pg-local: {started.stderr.strip()}")
    folder, url = started.stdout.split()
    try:
        yield url
    finally:
        subprocess.run([REPO / "scripts" / "pg-local", "stop", folder], capture_output=True, timeout=120)
