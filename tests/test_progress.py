"""Stage progress without a terminal (one line per trial event, a count at the end) and the liveness check
behind `sweeper status`, on a real Optuna storage and real job records."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from sweeper.core.workspace import stage_trials
from sweeper.search.executors.local import process_start
from sweeper.search.progress import StageProgress, job_gone


def add_trial(storage, study_id: int, mu: str, state: TrialState, attrs: dict) -> None:
    template = create_trial(state=state, params={"mu": mu}, distributions={"mu": CategoricalDistribution(["0.5", "1", "inf"])},
                            user_attrs=attrs, value=1.0 if state == TrialState.COMPLETE else None)  # fmt: skip
    storage.create_new_trial(study_id, template_trial=template)


def test_without_a_terminal_each_trial_event_is_a_line_and_the_count_ends_at_n_of_n(capsys) -> None:
    storage = optuna.storages.InMemoryStorage()
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s.mu")
    bars = StageProgress("s.mu", 3)
    bars.lines = True  # as when stdout is a log file
    add_trial(storage, study_id, "0.5", TrialState.RUNNING, {})
    bars.update(stage_trials(storage, study_id), max_retries=0)
    add_trial(storage, study_id, "1", TrialState.COMPLETE, {"reused_from": "m.mu#1", "metrics": {"mean/psnr": 30.5}})
    add_trial(storage, study_id, "inf", TrialState.FAIL, {"reason": "diverged"})
    storage.set_trial_state_values(0, TrialState.COMPLETE, [1.0])
    bars.update(stage_trials(storage, study_id), max_retries=0)
    bars.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[s.mu] trial 0 mu=0.5: started (attempt 1)"
    assert (
        "[s.mu] trial 1 mu=1: reused m.mu#1 (psnr 30.5000)" in lines
        and "[s.mu] trial 2 mu=inf: fail: diverged" in lines
    )
    assert lines[-1].startswith("[s.mu] 3/3 trials done, 0 running")  # reused and failed points count as resolved


def test_a_local_job_is_gone_when_its_process_is(tmp_path: Path) -> None:
    trial_dir = tmp_path / "trials" / "s" / "mu" / "0"
    trial_dir.mkdir(parents=True)
    child = subprocess.Popen(["sleep", "30"])
    host = socket.gethostname()
    record = {
        "host": host,
        "pid": child.pid,
        "start": process_start(child.pid),
        "gpu": None,
        "trial_dir": str(trial_dir),
    }
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "job.json").write_text(json.dumps(record))
    attrs = {"job_id": "job", "executor": "local", "trial_dir": str(trial_dir)}
    assert not job_gone(attrs)
    child.kill()
    child.wait()
    assert job_gone(attrs)
    assert not job_gone({"trial_dir": str(trial_dir)})  # claimed, not launched yet: not gone


TERMINAL_SCRIPT = """
import json, sys, time
from pathlib import Path
import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from sweeper.core.workspace import stage_trials
from sweeper.search.progress import StageProgress

trial_dir = Path(sys.argv[1])
(trial_dir / "progress.json").write_text(json.dumps({"stage": "gan", "step": 3, "total": 12}))
storage = optuna.storages.InMemoryStorage()
study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s.mu")
dist = {"mu": CategoricalDistribution(["0.5", "1"])}
for mu, state in (("0.5", TrialState.RUNNING), ("1", TrialState.COMPLETE)):
    attrs = {"trial_dir": str(trial_dir), "metrics": {"mean/psnr": 25.0}}
    storage.create_new_trial(study_id, template_trial=create_trial(state=state, params={"mu": mu}, distributions=dist,
                             user_attrs=attrs, value=1.0 if state == TrialState.COMPLETE else None))
bars = StageProgress("s.mu", 2)
assert not bars.lines, "stderr should be the pseudo-terminal"
bars.update(stage_trials(storage, study_id), max_retries=0)
time.sleep(0.3)
(trial_dir / "progress.json").write_text(json.dumps({"stage": "gan", "step": 9, "total": 12}))
bars.update(stage_trials(storage, study_id), max_retries=0)
bars.close()
"""


def test_on_a_pseudo_terminal_without_a_size_the_stage_and_trial_bars_are_drawn(tmp_path: Path) -> None:
    """`script` started from a non-terminal opens a pty of 0x0 columns, where tqdm used to draw empty bars."""
    if subprocess.run(["which", "script"], capture_output=True).returncode:
        pytest.skip("util-linux `script` is not installed")
    (tmp_path / "prog.py").write_text(TERMINAL_SCRIPT)
    typescript = tmp_path / "typescript"
    command = f"{sys.executable} {tmp_path / 'prog.py'} {tmp_path}"
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    done = subprocess.run(["script", "-qfec", command, str(typescript)], stdin=subprocess.DEVNULL, capture_output=True,
                          env=env, timeout=120)  # fmt: skip
    text = typescript.read_text(errors="replace")
    assert done.returncode == 0, text
    assert "s.mu:" in text and "1/2" in text  # the stage bar, with the point that finished before it
    assert "#0 mu=0.5" in text and "9/12" in text and "gan" in text  # the running trial's bar, with its step
    assert "it/s" in text or "s/it" in text  # and its rate
    assert "[s.mu] trial 1 mu=1: complete (psnr 25.0000)" in text  # a finished trial's line above the bars
