"""The Python API (`from sweeper import run_study, status, report`): settings as keyword arguments, typed results,
a real run of a two-point study with the trainer, Optuna and MLflow, its re-run, and its report."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import sweeper
from sweeper import api
from trainer.errors import UserError

PAIR = "description: two mu points\nconfig:\n  arch: srgan\n  beta: beta1_3\nstages:\n  - name: mu\n    grid:\n      mu: [0.5, inf]\n"
# The smoke preset cut to seconds per trial (as tests/test_cli_run.py's TINY), given both ways the API takes them.
TINY = {
    "train.pretrain_iters": 1,
    "train.milestones": [2],
    "train.pretrain_milestones": [1],
    "train.val_every": 3,
    "data.val_max_images": 1,
}


def test_keyword_settings_are_the_command_lines() -> None:
    opts = api.settings("mu_search", {"train.milestones": [2]}, {"train__iters": 3, "executor__n_jobs": 2, "mu": math.inf,
                                                                 "select_by": None, "data__val_sets": "[Set5,Set14]"})  # fmt: skip
    assert opts.study == "mu_search" and opts.executor_options == {"n_jobs": 2} and opts.select_by is None
    assert opts.config == {
        "train.milestones": [2],
        "train.iters": 3,
        "mu": math.inf,
        "data.val_sets": ["Set5", "Set14"],
    }


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: api.settings("a", {"train.iters": 3}, {"train__iters": 4}), "train.iters= is given twice"),
        (lambda: api.settings("a", {"study": "b"}, {}), "study= is given twice"),
        (lambda: api.settings("a", None, {"train__iter": 4}), "unknown key 'train.iter'; did you mean train.iters"),
        (
            lambda: api.settings("a", None, {"train__iters": 4}, allow_config=False),
            "train.iters= is a training setting",
        ),
        (lambda: api.run_study(preset="smoke"), "which study"),
        (lambda: api.status("mu_search", workspace="/nonexistent/ws"), "study mu_search has not been run"),
        (lambda: api.status("mu_search", repeats=3), "repeats= steers how a study runs"),
        (lambda: api.report("mu_search", executor="slurm"), "executor= steers how a study runs"),
        (lambda: api.status("mu_search", select_by="psnr"), "select_by= decides a stage's winner"),
        (lambda: api.report("mu_search", select_by="psnr"), "select_by=psnr: picks the snapshot of checkpoint=best"),
    ],
)
def test_bad_settings_are_user_errors(call, message: str) -> None:
    with pytest.raises(UserError, match=message):
        call()


def test_import_sweeper_stays_cheap_and_exposes_the_api() -> None:
    code = "import sys, sweeper; print(sorted(m for m in ('torch', 'mlflow', 'optuna', 'pandas') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    assert sweeper.run_study is api.run_study and sweeper.status is api.status and sweeper.report is api.report
    with pytest.raises(AttributeError, match="no attribute 'run_studies'"):
        sweeper.run_studies  # noqa: B018


@pytest.mark.slow
def test_run_study_returns_the_winner_and_the_trials_and_report_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pair.yaml").write_text(PAIR)
    monkeypatch.setenv("SWEEPER_STUDIES", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no ImageNet weights: smoke trains random ones
    ws = tmp_path / "ws"
    result = sweeper.run_study("pair", TINY, preset="smoke", workspace=str(ws), train__iters=3, train__ckpt_every=3)
    assert isinstance(result, api.StudyResult) and result.study == "pair" and result.workspace == ws
    assert result.select_by == "psnr" and result.winner is not None and result.winner["mu"] in ("0.5", "inf")
    trials = result.trials
    assert isinstance(trials, pd.DataFrame) and len(trials) == 2 and set(trials["state"]) == {"COMPLETE"}
    assert set(trials["mu"]) == {"0.5", "inf"} and trials["mean/psnr"].notna().all()
    (best,) = trials.loc[trials["winner"], "mu"]
    assert best == result.winner["mu"]
    assert (
        trials.loc[trials["winner"], "mean/psnr"].item() == trials["mean/psnr"].max()
    )  # by mean PSNR, higher is better
    pd.testing.assert_frame_equal(sweeper.status("pair", workspace=str(ws)), trials)

    again = sweeper.run_study("pair", TINY, preset="smoke", workspace=str(ws), train__iters=3, train__ckpt_every=3)
    assert again.winner == result.winner and len(again.trials) == 2  # nothing trained twice, nothing duplicated

    written = sweeper.report("pair", out=tmp_path / "out", workspace=str(ws))
    assert written.readme == tmp_path / "out" / "README.md" and written.readme in written.files
    assert written.tables and all(any(p.name.startswith(t) for p in written.files) for t in written.tables)
    assert written.mlflow_run_id is not None and "mu=0.5" in written.readme.read_text()
