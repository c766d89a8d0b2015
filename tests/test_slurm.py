"""`executor=slurm` on a real single-node SLURM (`scripts/slurm-local up`, which CI runs first): a study
through sbatch as one job array with --detach, status, logs and re-attach; a job cut by its time limit
mid-trial, requeued, resumed from its checkpoint; bad options refused before anything is created."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_helpers import (
    REPO,
    TINY,
    all_cores,
    assert_grid_once,
    env_for,
    status,
    sweeper,
    sweeper_args,
    tiny,
    trials,
    write_study,
)
from test_crash import assert_sound, crash_chain, crash_env, study_args

from sweeper.search.executors.slurm import SlurmExecutor, checkpoint_step
from trainer.errors import UserError

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]  # one worker runs them all: one cluster
SIGUSR2_BIT = 1 << (signal.SIGUSR2 - 1)  # in /proc/PID/status ShdPnd

# Where a crash meets a SLURM job being submitted or running (its id recorded or not, its logs half forwarded,
# its rung or fault just read, its promotion pending): the crash points that differ by executor.
JOB_POINTS = ("launching", "submitted", "job_recorded", "mlflow_run_created", "live_forwarded", "rung_reported",
              "before_promote", "machine_fault")  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def slurm() -> None:
    """The local SLURM, started if needed; the tests skip (saying why) only when it cannot be started."""
    up = subprocess.run(
        [REPO / "scripts" / "slurm-local", "up"],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=all_cores,  # its daemons serve the whole machine, not the test worker's core
    )
    if up.returncode != 0:
        pytest.skip(f"no SLURM: `scripts/slurm-local up` failed: {(up.stderr or up.stdout).strip()}")


@pytest.fixture(autouse=True)
def no_leftover_jobs(tmp_path: Path) -> Iterator[None]:
    """Leave no job of a failed test queued: scancel every job with a folder in the test's workspace."""
    yield
    folders = [p.name for p in (tmp_path / "ws" / "slurm").glob("*") if p.is_dir()]
    if folders:
        subprocess.run(["scancel", *folders], capture_output=True, timeout=60)


def workspace_args(tmp_path: Path) -> tuple[list[str], str, str]:
    ws = tmp_path / "ws"
    return [f"workspace={ws}"], f"sqlite:///{ws / 'optuna.db'}", f"sqlite:///{ws / 'mlflow.db'}"


def test_study_runs_as_one_job_array_detached_then_reattached(tmp_path: Path) -> None:
    env, mus = env_for(tmp_path), ["0.5", "inf"]
    write_study(tmp_path, "cl_pair", mus)
    where, storage, tracking_uri = workspace_args(tmp_path)
    args = ["run", "study=cl_pair", *where, *TINY, "executor=slurm"]

    detached = sweeper([*args, "--detach"], env)
    assert detached.returncode == 0, detached.stderr
    assert "storage is SQLite" in detached.stdout and "submitted" in detached.stdout
    submitted = {t.number: t.user_attrs["slurm_job_id"] for t in trials(storage, "cl_pair")}
    array = {job.split("_")[0] for job in submitted.values()}
    assert len(submitted) == 2 and len(array) == 1, submitted  # one array, one task per grid point

    shown = status("cl_pair", where, env)["trials"]
    assert {t["slurm_job_id"] for t in shown} == set(submitted.values())
    assert {t["slurm_state"] for t in shown} <= {"PENDING", "RUNNING", "COMPLETING", "COMPLETED"}

    # The detached sweeper is gone: this one adopts its jobs and, though told executor=local, watches them
    # with the executor that started them (issue 9 item 6); it submits nothing.
    attached = sweeper([a if a != "executor=slurm" else "executor=local" for a in args], env)
    assert attached.returncode == 0, attached.stderr
    complete = assert_grid_once(storage, tracking_uri, "cl_pair", mus)
    assert {t.number: t.user_attrs["slurm_job_id"] for t in complete} == submitted
    job_folders = {p.name for p in (tmp_path / "ws" / "slurm").iterdir() if p.is_dir()}
    assert job_folders == {*array, *submitted.values()}  # the array's submission and its tasks: nothing resubmitted

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    for t in complete:
        assert client.get_run(t.user_attrs["mlflow_run_id"]).data.tags["sweeper.slurm_job_id"] == submitted[t.number]
    logs = sweeper(["logs", "study=cl_pair", "trial=0", *where], env)
    assert logs.returncode == 0, logs.stderr
    assert f"cl_pair/mu/0: SLURM job {submitted[0]}, restart 0" in logs.stdout, logs.stdout


def wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < end, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.2)
    return value


def usr2_pending_or_gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return any(line.startswith("ShdPnd:") and int(line.split()[1], 16) & SIGUSR2_BIT for line in status.splitlines())


def test_time_limit_mid_trial_requeues_and_resumes_from_checkpoint(tmp_path: Path) -> None:
    """timeout_min=2: SLURM sends SIGUSR2 before the limit, submitit requeues the job, the trial resumes.

    So that the limit lands mid-trial however fast this machine trains, the test freezes the trial's process
    (SIGSTOP) once it has a checkpoint, waits until SLURM's signal is pending, and lets it go (SIGCONT)."""
    env, ws = env_for(tmp_path), tmp_path / "ws"
    write_study(tmp_path, "cl_one", ["0.5"])
    where, storage, tracking_uri = workspace_args(tmp_path)
    trial_dir, iters = ws / "trials" / "cl_one" / "mu" / "0", 8
    orchestrator = subprocess.Popen(
        sweeper_args(["run", "study=cl_one", *where, *tiny(f"train.iters={iters}", f"train.val_every={iters}"),
                      "executor=slurm", "executor.timeout_min=2"]),
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        log = wait_for(lambda: next(ws.glob("slurm/*/*_0_log.out"), None), 300, "the job's log")
        wait_for(lambda: checkpoint_step(trial_dir) >= 1, 300, "a checkpoint")
        pid = int(re.findall(r"pid (\d+), starting", log.read_text())[-1])  # the allocation running now
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_for(lambda: usr2_pending_or_gone(pid), 150, "SLURM's time-limit signal")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        _, err = orchestrator.communicate(timeout=480)
    finally:
        orchestrator.kill()
    assert orchestrator.returncode == 0, err

    (trial,) = trials(storage, "cl_one")  # one attempt: the requeue is invisible to Optuna
    assert_grid_once(storage, tracking_uri, "cl_one", ["0.5"])
    starts = [
        (int(r), int(s)) for r, s in re.findall(r"restart (\d+), pid \d+, starting at step (\d+)", log.read_text())
    ]
    assert starts[0] == (0, 0) and any(restart >= 1 and step >= 1 for restart, step in starts), (
        starts
    )  # requeued, resumed
    result = json.loads((trial_dir / "result.json").read_text())
    assert result["status"] == "complete" and result["iters"] == iters
    records = [json.loads(line) for line in (trial_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == iters  # resumed, never re-ran a logged step
    assert trial.user_attrs["slurm_job_id"] == log.parent.name


def test_cancel_scancels_queued_and_running_jobs(tmp_path: Path) -> None:
    """`sweeper cancel` fails both trials and scancels both jobs (one running, one queued): the controller got a
    kill request for each, neither runs any more, and `sweeper status` shows CANCELLED for each job SLURM still
    knows. (Once, in CI, SLURM had forgotten both jobs within the minute, though ended jobs stay 600 s: GONE;
    not reproduced here, so the kill requests in slurmctld's log are the evidence, and a failure prints it.)"""
    env = env_for(tmp_path)
    write_study(tmp_path, "cl_cancel", ["0.5", "inf"])
    where, storage, _ = workspace_args(tmp_path)
    detached = sweeper(["run", "study=cl_cancel", *where, *tiny("train.iters=500"), "executor=slurm", "--detach"], env)
    assert detached.returncode == 0, detached.stderr
    cancelled = sweeper(["cancel", "study=cl_cancel", *where], env)
    assert cancelled.returncode == 0 and "cancelled 2 trial(s)" in cancelled.stdout, cancelled.stderr
    deadline = time.monotonic() + 60  # a cancelled running job passes through COMPLETING while SLURM reaps it
    while True:
        shown = status("cl_cancel", where, env)["trials"]
        if "COMPLETING" not in {t["slurm_state"] for t in shown} or time.monotonic() > deadline:
            break
        time.sleep(2)
    states = {t["slurm_job_id"]: t["slurm_state"] for t in shown}
    said = controller_log(states)
    killed = {job for job in states if f"REQUEST_KILL_JOB JobId={job} " in said}
    assert {t["state"] for t in shown} == {"FAIL"} and len(states) == 2 and killed == set(states), said
    assert set(states.values()) <= {"CANCELLED", "GONE"}, said  # neither runs nor waits (GONE: forgotten, see above)


def controller_log(states: dict[str, str]) -> str:
    """The job states, and what slurmctld's log says of those jobs (their kill requests) and of its own restarts."""
    arrays = {job.split("_")[0] for job in states}
    log = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/slurm-local")) / "log" / "slurmctld.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else [f"({log} missing)"]
    mine = re.compile("|".join(rf"JobId={a}(?!\d)" for a in arrays) + "|version|lost")
    said = [line for line in lines if mine.search(line)]
    now = time.strftime("%Y-%m-%dT%H:%M:%S")  # a job is purged MinJobAge (600 s) after it ended
    return f"states {states} at {now}; slurmctld.log:\n" + "\n".join(said[-40:])


def test_bad_options_fail_before_anything_is_created(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    write_study(tmp_path, "cl_bad", ["0.5"])
    where, _, _ = workspace_args(tmp_path)
    for option, message in [("executor.partition=nope", "invalid partition"), ("executor.gpus=1", "executor.gpus_per_node"),
                            ("executor.trials_per_gpu=2", "executor.trials_per_gpu=2: the nodes offer no GPU shards")]:  # fmt: skip
        done = sweeper(["run", "study=cl_bad", *where, *TINY, "executor=slurm", option], env)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert done.returncode == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in done.stderr, (
            done.stderr
        )
        assert not (tmp_path / "ws").exists()
    with pytest.raises(UserError, match=r"executor.timeout_min='soon': expected int"):
        SlurmExecutor.from_options({"timeout_min": "soon"}, tmp_path, "smoke")


def test_single_training_runs_as_a_slurm_job(tmp_path: Path) -> None:
    """`sweeper train ... executor=slurm` (and so `sweeper promote`) trains in a SLURM job, then logs it."""
    env = env_for(tmp_path)
    where, _, tracking_uri = workspace_args(tmp_path)
    done = sweeper(["train", *where, *TINY, "executor=slurm"], env)
    assert done.returncode == 0, done.stderr
    job_id = re.search(r"submitted as slurm job (\S+);", done.stdout).group(1)
    run_dir = tmp_path / "ws" / "trials" / "train" / "run" / "0"
    assert json.loads((run_dir / "result.json").read_text())["status"] == "complete"
    assert (tmp_path / "ws" / "slurm" / job_id).is_dir()  # it ran through sbatch, not in this process

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert run.data.tags["sweeper.weights"] == "random" and "Set5/psnr" in run.data.metrics


def test_a_two_rank_trial_is_one_job_of_two_tasks_and_complete_once(tmp_path: Path) -> None:
    """`train.devices=2` on SLURM: one job, two tasks (gloo ranks here), the trial COMPLETE once, world_size 2."""
    cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, timeout=60).stdout.split()
    if max(map(int, cpus or ["0"])) < 2:
        pytest.skip(
            f"the SLURM node declares {cpus} CPU(s): two 1-CPU tasks do not fit (slurm.conf written where nproc honoured OMP_NUM_THREADS=1)"
        )
    env, mus = env_for(tmp_path), ["0.5"]
    write_study(tmp_path, "cl_ddp", mus)
    where, storage, tracking_uri = workspace_args(tmp_path)
    done = sweeper(
        ["run", "study=cl_ddp", *where, *tiny("model.num_blocks=1"), "train.devices=2", "executor=slurm"], env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (trial,) = assert_grid_once(storage, tracking_uri, "cl_ddp", mus)
    job_id = trial.user_attrs["slurm_job_id"]
    trial_dir = Path(trial.user_attrs["trial_dir"])
    assert json.loads((trial_dir / "result.json").read_text())["world_size"] == 2
    tasks = sorted(p.name for p in (tmp_path / "ws" / "slurm" / job_id).glob(f"{job_id}_*_log.out"))
    assert tasks == [f"{job_id}_0_log.out", f"{job_id}_1_log.out"], tasks  # submitit's log per task: two ranks

    from mlflow import MlflowClient

    assert MlflowClient(tracking_uri).get_run(trial.user_attrs["mlflow_run_id"]).data.params["world_size"] == "2"


@pytest.mark.slow
def test_kill_at_every_crash_point_on_slurm(tmp_path: Path) -> None:
    """The crash matrix of tests/test_crash.py with SLURM jobs and the journal storage a cluster would use, at
    the points where a job is being started or is alive (`JOB_POINTS`): the others are Optuna and MLflow
    bookkeeping after a job's result is in its folder, the same code for every executor, which the local
    chains cross on both storages and with both signals."""
    t0 = time.monotonic()
    runs = crash_chain(tmp_path, "journal", "slurm", points=JOB_POINTS)
    print(f"slurm x journal: {runs} sweeper runs in {time.monotonic() - t0:.0f}s")


def test_trials_started_locally_are_watched_locally_after_a_switch_to_slurm(tmp_path: Path) -> None:
    """Issue 9 item 6: a re-run with executor=slurm watches the local jobs of the killed run with the local
    executor (no job is run again); only the new job (the promotion to the last rung) goes to SLURM."""
    env, ws = crash_env(tmp_path), tmp_path / "ws"
    killed = sweeper(study_args(ws, "journal", "executor=local"), env | {"SWEEPER_CRASH_AT": "job_recorded:2"})
    assert killed.returncode == -9, killed.stderr
    done = sweeper(study_args(ws, "journal", "executor=slurm"), env)
    assert done.returncode == 0, done.stderr[-3000:]
    by_state = {t.state.name: t for t in assert_sound(ws, "journal")}
    assert (
        by_state["PRUNED"].user_attrs["executor"] == "local" and by_state["COMPLETE"].user_attrs["executor"] == "slurm"
    )
    assert (
        len({p.name.split("_")[0] for p in (ws / "slurm").iterdir() if p.is_dir()}) == 1
    )  # one submission: the promotion


def test_a_point_trains_to_the_same_numbers_locally_and_on_slurm(tmp_path: Path) -> None:
    """Issue 18: a study fixes every trial's intra-op threads (train.threads=1 unless set), so the same point
    and seed give bit-identical metrics through either executor; repeats run as ordinary trials of one array."""
    env = env_for(tmp_path)
    write_study(tmp_path, "same", ["0.5"])
    results = {}
    for executor in ("local", "slurm"):
        ws = tmp_path / executor
        done = sweeper(["run", "study=same", f"workspace={ws}", *TINY, "repeats=2", f"executor={executor}"], env)
        assert done.returncode == 0, done.stderr[-3000:]
        for t in trials(f"sqlite:///{ws / 'optuna.db'}", "same"):
            result = json.loads((Path(t.user_attrs["trial_dir"]) / "result.json").read_text())
            assert result["environment"]["threads"] == 1, result["environment"]
            results[executor, t.params["repeat"]] = result["per_image"]
    assert sorted(results) == [("local", 0), ("local", 1), ("slurm", 0), ("slurm", 1)]
    assert results["local", 0] == results["slurm", 0] and results["local", 1] == results["slurm", 1]
    assert results["local", 0] != results["local", 1]  # another seed, other numbers
