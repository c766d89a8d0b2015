"""Crash safety proven by fault injection (issue 9): a `sweeper run` killed (SIGKILL, as `kill -9`) or
interrupted (SIGINT, as Ctrl-C) at every named crash point of the trial state machine, then re-run with the
same command, ends exactly as an uninterrupted run: every grid point settled once, no retry spent, no
iteration trained twice or by two jobs, one MLflow run per settled trial (a stopped one tagged with its rung)
holding every training-log step once (forwarded live or at the end), exactly one winner on which Optuna
and MLflow agree, no stage run left RUNNING.

The crashes are chained to keep CI short: run k crashes at point k, and run k + 1 (crashing at point k + 1)
is the re-run that must repair what run k left; when a run finishes without reaching its point, the study is
checked and a fresh one started, which must reach it (so no crash point is dead code). The first job of every
trial folder meets a full disk (`SWEEPER_INJECT=nospace`), which must spend no retry. Trials are as cheap as real ones get: a two-point grid, two
GAN iterations of a tiny generator from scratch, rungs at 1 and 2 iterations (`scheduler=sha`, so the rung
and promotion points are reached too), `max_retries=0` so that any attempt counted as failed loses its point.
The racing points (`RACE_POINTS`, issue 18) end each chain on a fresh study that races two points over two
seeds (`repeats=auto max_repeats=2`, no halving: the two do not combine): it crashes after its first round is
recorded, and the re-run must train exactly the second round's seeds. The stall watchdog's point
(`STALL_POINTS`, issue 19) is crossed by a study of its own (`stall_chain`), whose first jobs hang instead.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from cluster_helpers import (
    REPO,
    ctrl_c_works,
    env_for,
    sweeper,
    sweeper_args,
    write_study,
)
from mlflow import MlflowClient
from optuna.trial import TrialState

from sweeper.analysis import ledger
from sweeper.core.crashpoints import CRASH_POINTS
from sweeper.core.workspace import MACHINE, Workspace

MUS = ["0.5", "inf"]
CHEAP = ["preset=smoke", "weights=random", "train.iters=2", "train.from_scratch=true", "train.milestones=[1]",
         "train.val_every=2", "train.ckpt_every=1", "train.log_every=1", "data.val_max_images=1",
         "model.num_feat=8", "model.num_blocks=1", "scheduler=sha", "max_retries=0"]  # fmt: skip
STORAGES = {"sqlite": "sqlite:///{ws}/optuna.db", "journal": "journal://{ws}/optuna.journal"}
RACE_POINTS = ("race_recorded",)
STALL_POINTS = ("stalled",)
RACING = ("scheduler=none", "repeats=auto", "max_repeats=2")


def study_args(ws: Path, storage: str, *extra: str) -> list[str]:
    """`sweeper run` of the crash study, CHEAP with `extra` settings added or replacing its own."""
    keys = {e.split("=")[0] for e in extra}
    cheap = [a for a in CHEAP if a.split("=")[0] not in keys]
    return ["run", "study=crash", f"workspace={ws}", f"storage={STORAGES[storage].format(ws=ws)}", *cheap, *extra]


def crash_env(tmp_path: Path) -> dict[str, str]:
    write_study(tmp_path, "crash", MUS)
    return env_for(tmp_path) | {"SWEEPER_LEASE_S": "1", "OMP_NUM_THREADS": "1"}


def assert_sound(ws: Path, storage: str, study: str = "crash", mus: list[str] = MUS) -> list[optuna.trial.FrozenTrial]:
    """The invariants of issue 9 on a finished study (attempts stopped by `sweeper cancel` or by a fault of the
    machine aside); returns its trials."""
    opened = Workspace.resolve(str(ws), STORAGES[storage].format(ws=ws), None).open_storage()
    trials = optuna.load_study(study_name=f"{study}.mu", storage=opened).get_trials(deepcopy=False)
    settled = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    states = [(t.number, t.state.name, t.params, t.user_attrs.get("reason")) for t in trials]
    trials = [t for t in trials if not str(t.user_attrs.get("reason")).startswith(("cancelled", MACHINE))]
    assert Counter(t.params["mu"] for t in settled) == Counter(mus), states  # every point settled exactly once
    assert not [t for t in trials if t.state != TrialState.COMPLETE and t not in settled], (
        states
    )  # nothing failed, nothing left
    complete = [t for t in settled if t.state == TrialState.COMPLETE]
    assert len(complete) == 1, states  # halving with eta=3 on two points: one goes on to the last rung
    for t in settled:  # no iteration trained twice (resumed, never two jobs in one folder)
        folder = Path(t.user_attrs["trial_dir"])
        steps = [
            r["step"]
            for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "train"
        ]
        assert steps == list(range(1, t.user_attrs["reached_iters"] + 1)), (t.number, steps)
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(study).experiment_id
    runs = client.search_runs([experiment], "tags.`sweeper.kind` = 'trial'")
    assert sorted(r.info.run_id for r in runs) == sorted(t.user_attrs["mlflow_run_id"] for t in settled)  # one run each
    for t in settled:  # every training-log line forwarded to the trial's run (live or at its end), each step once
        run_id, logged = t.user_attrs["mlflow_run_id"], range(1, t.user_attrs["reached_iters"] + 1)
        for key in ("train/l_g", "train/step_s"):
            assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(logged), (t.number, key)
    stopped = {r.info.run_id: r.data.tags.get("sweeper.stopped_at") for r in runs}
    assert all(
        stopped[t.user_attrs["mlflow_run_id"]] == (None if t in complete else str(t.user_attrs["reached_iters"]))
        for t in settled
    )
    winner_trial = optuna.load_study(study_name=f"{study}.mu", storage=opened).user_attrs["winner_trial"]
    winners = [r.info.run_id for r in runs if r.data.tags["sweeper.winner"] == "true"]
    assert winners == [next(t.user_attrs["mlflow_run_id"] for t in complete if t.number == winner_trial)]
    stages = client.search_runs([experiment], "tags.`sweeper.kind` = 'stage'")
    assert [(s.info.status, s.data.tags["sweeper.winner_run_id"]) for s in stages] == [("FINISHED", winners[0])]
    return trials


def assert_race_sound(ws: Path, storage: str) -> None:
    """A race over MUS with max_repeats=2 that nothing separated: both rounds recorded, each point's two seeds
    trained once (repeat r with seed r), nothing failed, one MLflow run per trial, and a winner."""
    opened = Workspace.resolve(str(ws), STORAGES[storage].format(ws=ws), None).open_storage()
    study = optuna.load_study(study_name="crash.mu", storage=opened)
    trials = study.get_trials(deepcopy=False)
    assert sorted((t.params["mu"], t.params["repeat"], t.state.name) for t in trials) == sorted(
        (mu, r, "COMPLETE") for mu in MUS for r in (0, 1)), [(t.number, t.state.name, t.params, t.user_attrs.get("reason")) for t in trials]  # fmt: skip
    race = study.user_attrs["race"]
    assert race["rounds"] == [[0, 1], [0, 1]] and "max_repeats=2 reached" in race["end"], race
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("crash").experiment_id], "tags.`sweeper.kind` = 'trial'")
    assert sorted(r.info.run_id for r in runs) == sorted(t.user_attrs["mlflow_run_id"] for t in trials)
    assert "winner_trial" in study.user_attrs


def crash_chain(
    tmp_path: Path, storage: str, executor: str, signal: str | None = None, points: tuple[str, ...] = CRASH_POINTS
) -> int:
    """Crash at each of `points` in turn (see the module docstring); returns the number of `sweeper run`s."""
    env, runs, fresh = crash_env(tmp_path), 0, 0
    faulty = env | {"SWEEPER_INJECT": "nospace"}  # the first job of each trial folder meets a full disk
    ws = tmp_path / f"ws{fresh}"
    expected = 130 if signal == "INT" else -9
    for point in [p for p in points if p not in RACE_POINTS + STALL_POINTS]:
        for attempt in range(2):
            extra = {"SWEEPER_CRASH_AT": point} | ({"SWEEPER_CRASH_SIGNAL": signal} if signal else {})
            done = sweeper(study_args(ws, storage, f"executor={executor}"), faulty | extra)
            runs += 1
            assert "Traceback" not in done.stderr, (point, done.stderr)
            if done.returncode == expected:
                break
            assert done.returncode == 0 and attempt == 0, (point, done.returncode, done.stderr[-3000:])
            assert_sound(ws, storage)  # finished before reaching the point: check it, then a fresh study
            fresh += 1
            ws = tmp_path / f"ws{fresh}"
    done = sweeper(study_args(ws, storage, f"executor={executor}"), faulty)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = assert_sound(ws, storage)
    opened = Workspace.resolve(str(ws), STORAGES[storage].format(ws=ws), None).open_storage()
    faults = [
        t for t in optuna.load_study(study_name="crash.mu", storage=opened).get_trials() if t.state == TrialState.FAIL
    ]
    assert {t.params["mu"] for t in faults} == set(MUS) and all(
        t.user_attrs["reason"].startswith(MACHINE) for t in faults
    )
    assert {t.user_attrs["attempt"] for t in trials} == {1}  # the machine's faults spent no retry (max_retries=0)
    ws = tmp_path / "race"
    for point in RACE_POINTS:
        extra = {"SWEEPER_CRASH_AT": point} | ({"SWEEPER_CRASH_SIGNAL": signal} if signal else {})
        crashed = sweeper(study_args(ws, storage, f"executor={executor}", *RACING), env | extra)
        assert crashed.returncode == expected and "Traceback" not in crashed.stderr, (
            point,
            crashed.returncode,
            crashed.stderr[-3000:],
        )
    done = sweeper(study_args(ws, storage, f"executor={executor}", *RACING), env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_race_sound(ws, storage)
    return runs + len(RACE_POINTS) + 2


def stall_chain(tmp_path: Path, storage: str, executor: str, stall_s: float) -> None:
    """The stall watchdog (issue 19) on a one-point study whose first job hangs without progress
    (`SWEEPER_INJECT=stall:600`). The sweeper is killed right after it decided the stall (crash point `stalled`:
    the job still hangs, unwatched); the re-run kills it after `executor.stall_s` of silence, says so in one
    line, and resumes the point: the study ends as an uninterrupted one, no retry spent, the stall a fault of
    the machine whose whole time (across the sweeper's crash) is in the trial's cost ledger. Run by hand through
    the local SLURM as `stall_chain(tmp_path, "journal", "slurm", stall_s=30)` (stall_s above a job's imports
    before its first heartbeat): it passed in 211 s, too long to add to CI for a path that differs only in
    `Executor.kill` (scancel) and the job state (squeue)."""
    env, ws, mus = crash_env(tmp_path) | {"SWEEPER_INJECT": "stall:600"}, tmp_path / "ws", ["inf"]
    write_study(tmp_path, "crash", mus)
    args = study_args(ws, storage, f"executor={executor}", f"executor.stall_s={stall_s:g}")
    for point in STALL_POINTS:
        crashed = sweeper(args, env | {"SWEEPER_CRASH_AT": point})
        assert crashed.returncode == -9 and "Traceback" not in crashed.stderr, (point, crashed.stderr[-3000:])
    done = sweeper(args, env)
    assert done.returncode == 0, done.stderr[-3000:]
    said = [line for line in done.stdout.splitlines() if "killed by the watchdog" in line]
    assert len(said) == 1 and f"(executor.stall_s={stall_s:g}: raise it" in said[0], done.stdout
    trials = assert_sound(ws, storage, mus=mus)
    assert {t.user_attrs["attempt"] for t in trials} == {1}  # no retry spent (max_retries=0)
    opened = Workspace.resolve(str(ws), STORAGES[storage].format(ws=ws), None).open_storage()
    (stalled,) = [
        t for t in optuna.load_study(study_name="crash.mu", storage=opened).get_trials() if t.state == TrialState.FAIL
    ]
    assert stalled.user_attrs["reason"].startswith(f"{MACHINE}: stalled: no progress for"), stalled.user_attrs
    lost = [line for line in ledger.read(Path(stalled.user_attrs["trial_dir"])) if "lost" in line]
    assert [line["lost"] for line in lost] == [stalled.user_attrs["launch_token"]], lost
    assert lost[0]["wall_s"] >= 2 * stall_s and lost[0]["iters"] == 0, lost  # watched by both sweepers


@pytest.mark.slow
def test_a_stalled_trial_is_killed_resumed_and_its_time_counted(tmp_path: Path) -> None:
    stall_chain(tmp_path, "journal", "local", stall_s=4)


@pytest.mark.slow
def test_kill_at_every_crash_point_then_rerun(tmp_path: Path) -> None:
    """SIGKILL at every point on SQLite; the Ctrl-C chain below runs on the journal storage, so each storage
    and each signal meets every crash point (a chain per storage and signal would double the cost)."""
    t0 = time.monotonic()
    runs = crash_chain(tmp_path, "sqlite", "local")
    print(f"sqlite: {runs} sweeper runs in {time.monotonic() - t0:.0f}s")


@pytest.mark.slow
def test_ctrl_c_at_every_crash_point_spends_no_retry(tmp_path: Path) -> None:
    crash_chain(tmp_path, "journal", "local", signal="INT")


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        sweeper_args(args),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_works,
    )


def wait_for_a_job(ws: Path, runner: subprocess.Popen[str], timeout: float = 120) -> None:
    """Until a local job of the workspace has started (its record has a pid); the stores are not opened here."""
    end = time.monotonic() + timeout
    while not any(json.loads(r.read_text()).get("pid") for r in (ws / "jobs").glob("*.json")):
        assert runner.poll() is None, runner.communicate()
        assert time.monotonic() < end, "no job was started"
        time.sleep(0.2)


@pytest.mark.slow
def test_run_racing_cancel_says_cancelled_then_resumes(tmp_path: Path) -> None:
    """Issue 9 items 5 and 9: `sweeper cancel` while `sweeper run` works ends the run with one line (no
    traceback), its stage run KILLED; the re-run resumes the cancelled trials from their checkpoints."""
    env, ws = crash_env(tmp_path), tmp_path / "ws"
    args = study_args(ws, "sqlite", "train.iters=12", "train.val_every=12")
    runner = start(args, env)
    wait_for_a_job(ws, runner)
    cancelled = sweeper(["cancel", "study=crash", f"workspace={ws}"], env)
    assert cancelled.returncode == 0 and "cancelled 2 trial(s)" in cancelled.stdout, cancelled.stderr
    _, err = runner.communicate(timeout=120)
    assert runner.returncode == 2 and "Traceback" not in err and "was cancelled" in err, err
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    (stage,) = client.search_runs(
        [client.get_experiment_by_name("crash").experiment_id], "tags.`sweeper.kind` = 'stage'"
    )
    assert stage.info.status == "KILLED"
    done = sweeper(args, env)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = assert_sound(ws, "sqlite")
    assert {t.user_attrs["attempt"] for t in trials} == {1}  # a cancel spends no retry
    other = sweeper(study_args(ws, "sqlite", "train.iters=12", "train.val_every=12", "scheduler=none"), env)
    assert (
        other.returncode == 2 and other.stderr.count("error:") == 1 and "was started with scheduler=sha" in other.stderr
    ), other.stderr


@pytest.mark.slow
def test_trials_of_a_dead_sweeper_on_another_host_are_adopted_when_its_lease_expires(tmp_path: Path) -> None:
    """Issue 9 item 7: a sweeper on another machine cannot be asked whether it lives; its lease says so."""
    env, ws = crash_env(tmp_path), tmp_path / "ws"
    killed = sweeper(study_args(ws, "journal"), env | {"SWEEPER_CRASH_AT": "job_recorded:2"})
    assert killed.returncode == -9, killed.stderr
    storage = Workspace.resolve(str(ws), STORAGES["journal"].format(ws=ws), None).open_storage()
    lease = time.time() + 8
    for t in optuna.load_study(study_name="crash.mu", storage=storage).get_trials(states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, "owner", "elsewhere:1:1")
        storage.set_trial_user_attr(t._trial_id, "lease_until", lease)
    done = sweeper(study_args(ws, "journal"), env)
    assert done.returncode == 0 and time.time() >= lease, done.stderr[-3000:]
    trials = assert_sound(ws, "journal")
    assert {t.user_attrs["owner"].split(":")[0] for t in trials if t.state == TrialState.COMPLETE} != {"elsewhere"}


@pytest.mark.slow
def test_random_kills_lose_and_duplicate_nothing() -> None:
    """A short, seeded run of benchmarks/crash_soak.py (one study, three kills at random moments)."""
    spec = importlib.util.spec_from_file_location("crash_soak", REPO / "benchmarks" / "crash_soak.py")
    assert spec is not None and spec.loader is not None
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    counts = soak.soak(seed=1, studies=1, kills=3, max_wait_s=15.0, storage="journal")
    assert counts["runs"] >= 2 and counts["kills"] >= 1, counts
    assert counts["trials lost"] == counts["trials duplicated"] == 0, counts


@pytest.mark.slow
def test_two_sweepers_racing_on_one_halving_study(tmp_path: Path) -> None:
    """A second `sweeper run` started while the first runs: they share the grid and the rungs (leases of one
    second, so they also adopt each other's trials now and then), and the study ends as one run's would."""
    env, ws = crash_env(tmp_path), tmp_path / "ws"
    args = study_args(ws, "journal", "train.iters=6", "train.val_every=6", "executor.n_jobs=1")
    runners = [start(args, env) for _ in range(2)]
    errors = [r.communicate(timeout=600)[1] for r in runners]
    assert [r.returncode for r in runners] == [0, 0], errors
    assert_sound(ws, "journal")
