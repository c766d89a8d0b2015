"""End to end through the CLI with the real trainer, Optuna and MLflow stores: run, kill -9 and resume,
status, logs, cancel, train, and bad input (one-line error, exit 2, nothing created)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from trainer.checkpoint import load_checkpoint

# The smoke preset cut to seconds per trial; ckpt_every=1 so a killed trial has a checkpoint to resume from.
TINY = ["preset=smoke", "train.iters=3", "train.pretrain_iters=1", "train.milestones=[2]", "train.pretrain_milestones=[1]",
        "train.val_every=3", "train.ckpt_every=1"]  # fmt: skip
MU_GRID = {"0.2", "0.5", "1", "5", "10", "20", "inf"}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """No ImageNet weights (smoke falls back to random ones) and a clean working folder."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("SWEEPER_")}
    return out | {"TORCH_HOME": str(tmp_path / "torch_home")}


def sweeper(args: list[str], cwd: Path, env: dict[str, str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sweeper.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        **kw,
    )


def start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sweeper.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def status(ws: Path, cwd: Path, env: dict[str, str], study: str = "mu_search") -> dict:
    done = sweeper(["status", f"study={study}", f"workspace={ws}", "--format", "json"], cwd, env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_for(predicate, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def job_pid(trial_dir: Path, ws: Path) -> int:
    for record in (ws / "jobs").glob("*.json"):
        data = json.loads(record.read_text())
        if data["trial_dir"] == str(trial_dir):
            return data["pid"]
    raise AssertionError(f"no job record for {trial_dir}")


@pytest.mark.slow
def test_mu_search_survives_kill_9_and_agrees_with_mlflow(tmp_path: Path, env: dict[str, str]) -> None:
    ws = tmp_path / "ws"
    args = ["run", "study=mu_search", f"workspace={ws}", *TINY]
    first = start(args, tmp_path, env)
    folders = ws / "trials" / "mu_search" / "mu"
    victim: list[Path] = []

    def second_trial_mid_training() -> bool:  # trial 0 finished, a later one checkpointed but not done
        assert first.poll() is None, first.communicate()
        victim[:] = [
            d
            for d in folders.glob("*")
            if d.name != "0" and (d / "ckpt" / "last.pt").exists() and not (d / "result.json").exists()
        ]
        return (folders / "0" / "result.json").exists() and bool(victim)

    wait_for(second_trial_mid_training)
    os.kill(first.pid, signal.SIGKILL)
    os.killpg(job_pid(victim[0], ws), signal.SIGKILL)  # the trial's process too: it must resume from its checkpoint
    first.communicate()
    assert not (victim[0] / "result.json").exists()
    (stale,) = [
        t for t in status(ws, tmp_path, env)["trials"] if t["state"] == "RUNNING"
    ]  # no process behind it any more
    assert stale["trial_dir"] == str(victim[0]) and stale["job_gone"] and stale["duration_s"] is None
    assert (
        "RUNNING (job gone; re-run to resume)"
        in sweeper(["status", "study=mu_search", f"workspace={ws}"], tmp_path, env).stdout
    )

    done = sweeper(args, tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert "mu_search: winner mu=" in done.stdout and "sweeper report study=mu_search" in done.stdout
    assert (
        "[mu_search.mu] trial " in done.stdout and "[mu_search.mu] 7/7 trials done" in done.stdout
    )  # stdout is no terminal

    trials = status(ws, tmp_path, env)["trials"]
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    assert len(complete) == 7 and {t["params"]["mu"] for t in complete} == MU_GRID  # the grid, each point once
    (failed,) = [t for t in trials if t["state"] == "FAIL"]
    assert failed["reason"].startswith(
        "machine fault: the job ended without a result (killed"
    )  # kill -9: no retry spent
    suggested = failed["reason"].split("`")[1].split()  # the command the reason suggests works as printed
    assert suggested[:2] == ["sweeper", "logs"] and sweeper(suggested[1:], tmp_path, env).returncode == 0
    (retry,) = [t for t in complete if t["params"]["mu"] == failed["params"]["mu"]]
    assert retry["trial_dir"] == failed["trial_dir"] == str(victim[0]) and retry["attempt"] == 1
    assert sum(t["winner"] for t in trials) == 1

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mu_search").experiment_id
    (parent,) = client.search_runs([exp], "tags.`sweeper.kind` = 'stage'")
    nested = client.search_runs([exp], "tags.`sweeper.kind` = 'trial'")
    assert parent.info.status == "FINISHED" and parent.data.tags["winner.mu"] in MU_GRID
    assert {r.info.run_id for r in nested} == {t["mlflow_run_id"] for t in complete}  # one nested run per trial
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in nested)
    for run in nested:
        (trial,) = [t for t in complete if t["mlflow_run_id"] == run.info.run_id]
        assert run.data.params["mu"] == trial["params"]["mu"] and run.data.tags["sweeper.weights"] == "random"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/l_g")] == [2]  # the loss line, once
        assert run.data.metrics["mean/psnr"] == pytest.approx(trial["metrics"]["mean/psnr"])
        assert [m.step for m in client.get_metric_history(run.info.run_id, "Set5/psnr")] == [3]
    winner = [r for r in nested if r.data.tags["sweeper.winner"] == "true"]
    assert [r.info.run_id for r in winner] == [parent.data.tags["sweeper.winner_run_id"]]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "results")} >= {"results/table1_mu_srgan.md", "results/table1_mu_srgan.csv",
                                                                                  "results/comparison.json", "results/comparison.csv"}  # fmt: skip
    verdict = parent.data.tags["sweeper.verdict"]  # issue 18: the paired comparison decided, and says how
    assert verdict in ("winner", "tie") and f"stage mu: {'!!! TIE' if verdict == 'tie' else 'winner'}" in done.stdout
    assert (
        "resolution (estimate)" in done.stdout
        and "over images, one seed" in parent.data.tags["sweeper.verdict_summary"]
    )

    again = sweeper(args, tmp_path, env)  # finished: nothing is trained or logged again
    assert again.returncode == 0, again.stderr
    assert "mu_search: nothing to do" in again.stdout and "[mu_search.mu] 7/7 trials done" in again.stdout
    assert len(status(ws, tmp_path, env)["trials"]) == len(trials)
    assert len(client.search_runs([exp], "tags.`sweeper.kind` = 'trial'")) == 7

    # A user study (./studies of the cwd) whose only point is a finished mu_search trial: reused, not trained.
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "again.yaml").write_text(
        "description: mu=inf once more\nconfig: {arch: srgan, beta: beta1_3}\nstages:\n  - name: x\n    grid: {mu: [inf]}\n"
    )
    reused = sweeper(["run", "study=again", f"workspace={ws}", *TINY], tmp_path, env)
    assert reused.returncode == 0, reused.stderr
    (source,) = [t for t in complete if t["params"]["mu"] == "inf"]
    (copy,) = status(ws, tmp_path, env, "again")["trials"]
    assert copy["state"] == "COMPLETE" and copy["reused_from"] == f"mu_search.mu#{source['number']}"
    assert (
        f"stage x: all 1 points reused from earlier trials (mu_search.mu#{source['number']}); nothing to train"
        in reused.stdout
    )
    assert copy["trial_dir"] != source["trial_dir"]  # its own folder: its own config.yaml, the source's outcome
    assert (Path(copy["trial_dir"]) / "result.json").read_bytes() == (
        Path(source["trial_dir"]) / "result.json"
    ).read_bytes()
    assert not (Path(copy["trial_dir"]) / "ckpt").exists()  # nothing was trained for it
    again_exp = client.get_experiment_by_name("again").experiment_id
    (run,) = client.search_runs([again_exp], "tags.`sweeper.kind` = 'trial'")
    assert run.data.tags["sweeper.reused_from"] == copy["reused_from"] and run.data.metrics[
        "mean/psnr"
    ] == pytest.approx(source["metrics"]["mean/psnr"])

    assert load_checkpoint(Path(retry["trial_dir"]) / "ckpt" / "last.pt").keys() == {
        "config",
        "stage",
        "step",
        "g",
    }  # lean once finished
    logs = sweeper(["logs", "study=mu_search", f"trial={retry['number']}", f"workspace={ws}"], tmp_path, env)
    assert logs.returncode == 0 and "stderr.log <==" in logs.stdout
    table = sweeper(["status", "study=mu_search", f"workspace={ws}"], tmp_path, env)
    assert table.returncode == 0 and table.stdout.count("COMPLETE") == 7 and "verdict mu: " in table.stdout


@pytest.mark.slow
def test_cancel_stops_the_running_trial(tmp_path: Path, env: dict[str, str]) -> None:
    ws = tmp_path / "ws"
    # long enough that the first trial still runs when `cancel` comes (a 3-iteration smoke trial ends in ~4 s,
    # sooner than a status poll and the cancel command's start)
    slow = [k for k in TINY if not k.startswith(("train.iters=", "train.val_every="))] + [
        "train.iters=2000",
        "train.val_every=2000",
    ]
    run = start(["run", "study=ablation", f"workspace={ws}", *slow], tmp_path, env | {"SWEEPER_LIVE_S": "0.5"})
    url = f"sqlite:///{ws / 'mlflow.db'}"

    def live_curve() -> list[int]:  # issue 22: the running trial's loss lines reach its MLflow run as it trains
        assert run.poll() is None, run.communicate()
        if not (ws / "mlflow.db").exists():  # MlflowClient() would create it under the starting sweeper
            return []
        client = MlflowClient(url)
        found = client.get_experiment_by_name("ablation")
        runs = client.search_runs([found.experiment_id], "tags.`sweeper.kind` = 'trial'") if found else []
        return [m.step for r in runs if r.info.status == "RUNNING" for m in client.get_metric_history(r.info.run_id, "train/l_g")]  # fmt: skip

    wait_for(lambda: bool(live_curve()))
    done = sweeper(["cancel", "study=ablation", f"workspace={ws}"], tmp_path, env)
    assert done.returncode == 0 and "cancelled 3 trial(s)" in done.stdout, done.stdout + done.stderr
    _, err = run.communicate(timeout=120)
    assert run.returncode == 2 and "was cancelled" in err
    client = MlflowClient(url)
    (live,) = client.search_runs(
        [client.get_experiment_by_name("ablation").experiment_id], "tags.`sweeper.kind` = 'trial'"
    )
    steps = [m.step for m in client.get_metric_history(live.info.run_id, "train/l_g")]
    assert live.info.status == "KILLED" and steps == list(range(2, 2 * len(steps) + 1, 2)), steps  # each line once
    trials = status(ws, tmp_path, env, "ablation")["trials"]
    assert {t["state"] for t in trials} == {"FAIL"} and all(t["reason"].startswith("cancelled") for t in trials)
    pid = job_pid(Path(trials[0]["trial_dir"]), ws)
    wait_for(
        lambda: (
            not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
        ),
        30,
    )


@pytest.mark.slow
def test_train_logs_one_run(tmp_path: Path, env: dict[str, str]) -> None:
    ws = tmp_path / "ws"
    done = sweeper(["train", "arch=srgan", "mu=0.5", "beta=beta3_6", f"workspace={ws}", *TINY], tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert "Set5" in done.stdout and "PSNR" in done.stdout
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert run.data.params["mu"] == "0.5" and "Set5/psnr" in run.data.metrics and run.info.status == "FINISHED"


def broken_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for name in ("train", "Set5"):
        (root / name).mkdir(parents=True)
    (root / "train" / "bad.png").write_bytes(b"not a png")
    (root / "Set5" / "bad.png").write_bytes(b"not a png")
    return root


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["study=nope"], "unknown study 'nope'"),
        (["study=mu_search", "train.iter=3"], "did you mean train.iters"),
        (["study=beta_search", "mu=0"], "mu=0"),
        (["study=beta_search", "mu=-1"], "mu=-1.0: mu must be a positive number"),
        (["study=mu_search", "preset=galaxy"], "preset='galaxy' is not valid; choose one of paper, proxy, smoke"),
        (["study=mu_search", "beta=beta9_9"], "beta='beta9_9' is not valid"),
        (["study=mu_search", "mu=0.5"], "what stage 'mu' of study mu_search searches"),
        (["study=mu_search", "seed=inf"], "seed=inf: a finite integer"),
        (["study=mu_search", "data.root=/nonexistent/data"], "/nonexistent/data"),
        (["study=mu_search", "data.root=BROKEN", "data.train_sets=[train]"], "bad.png"),
        (
            ["study=mu_search", "data.root=BROKEN"],
            "none of the training sets preset=smoke trains on (T91, BSD200); sets found there: Set5, train",
        ),
        (["study=beta_search"], "run study=mu_search first or pass mu=VALUE"),
        (["study=mu_search", "select_by=lpips"], "select_by=lpips needs LPIPS"),
        (["study=mu_search", "preset=proxy"], "ImageNet weights"),
        (["study=mu_search", "executor.n_jobs=0"], "executor.n_jobs=0"),
        (
            ["study=mu_search", "preset=proxy", "executor.trials_per_gpu=0"],
            "executor.trials_per_gpu=0",
        ),  # before the weights
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_state(
    tmp_path: Path, env: dict[str, str], args: list[str], message: str
) -> None:
    if "data.root=BROKEN" in args:
        root = broken_data(tmp_path)
        args = [a.replace("BROKEN", str(root)) for a in args]
    preset = [] if any(a.startswith("preset=") for a in args) else TINY
    done = sweeper(["run", *args, f"workspace={tmp_path / 'ws'}", *preset], tmp_path, env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert not (tmp_path / "ws").exists()  # no store, trial, checkpoint or cache entry
    assert not (tmp_path / "torch_home").exists()


@pytest.mark.parametrize(("command", "message"), [
    (["train", "mu=-0.5", *TINY], "mu=-0.5: mu must be a positive number"),
    (["train", "preset=galaxy"], "preset='galaxy' is not valid"),
    (["plan", "study=mu_search", "preset=galaxy"], "preset='galaxy' is not valid"),
    (["rank-check", "study=mu_search", "preset=galaxy"], "preset= is a training setting"),
])  # fmt: skip
def test_other_commands_refuse_bad_input_before_creating_anything(
    tmp_path: Path, env: dict[str, str], command: list[str], message: str
) -> None:
    done = sweeper([*command, f"workspace={tmp_path / 'ws'}"], tmp_path, env)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not (tmp_path / "ws").exists() and not (tmp_path / "torch_home").exists()


def test_status_of_a_study_never_run_is_an_error(tmp_path: Path, env: dict[str, str]) -> None:
    done = sweeper(["status", "study=mu_search", f"workspace={tmp_path / 'ws'}"], tmp_path, env)
    assert done.returncode == 2 and "has not been run" in done.stderr
    assert not (tmp_path / "ws").exists()
