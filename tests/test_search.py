"""The Optuna record of a stage (real SQLite storage): enqueue, atomic claims, retries; trial identity; ranking."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

from sweeper.core.identity import config_hash
from sweeper.core.repeats import point_of, units
from sweeper.core.selection import rank
from sweeper.core.studies import load
from sweeper.core.workspace import Workspace, claim, enqueue, finish, stage_trials
from sweeper.search.leases import owner_alive, owner_id
from trainer.config import build_config

GRID = load("mu_search").stages[0]


def make_stage(tmp_path: Path) -> tuple[Workspace, optuna.storages.BaseStorage, int]:
    ws = Workspace.resolve(str(tmp_path / "ws"))
    ws.root.mkdir(parents=True)
    storage = optuna.storages.get_storage(ws.storage)
    optuna.create_study(storage=storage, study_name="mu_search.mu")
    return ws, storage, storage.get_study_id_from_name("mu_search.mu")


def test_enqueue_is_idempotent_and_creates_each_trial_with_its_folder(tmp_path: Path) -> None:
    """Issue 9 item 3: a trial is created with its folder in one step (a kill cannot leave one without),
    named by the grid point's index, so every attempt and every re-run finds the same folder."""
    ws, storage, sid = make_stage(tmp_path)
    points = GRID.points()
    for _ in range(2):
        enqueue(storage, sid, ws, "mu_search", "mu", GRID.grid, units(GRID, 1), max_retries=2)
    trials = storage.get_all_trials(sid)
    assert len(trials) == 7 and {t.state for t in trials} == {TrialState.WAITING}
    assert sorted(t.params["mu"] for t in trials) == sorted(p["mu"] for p in points)
    for t in trials:
        assert t.params["repeat"] == 0
        assert t.user_attrs == {
            "attempt": 1,
            "trial_dir": str(ws.trial_dir("mu_search", "mu", points.index(point_of(t.params)))),
        }
    enqueue(
        storage, sid, ws, "mu_search", "mu", GRID.grid, units(GRID, 3), max_retries=2
    )  # more repeats later: only the new ones
    trials = storage.get_all_trials(sid)
    assert len(trials) == 21 and sorted(t.params["repeat"] for t in trials) == [0] * 7 + [1] * 7 + [2] * 7
    folders = {(point_of(t.params)["mu"], t.params["repeat"]): Path(t.user_attrs["trial_dir"]).name for t in trials}
    assert [folders[k] for k in (("0.2", 0), ("0.2", 2), ("inf", 1))] == ["0", "0-r2", "6-r1"]


def test_failed_points_are_retried_in_their_folder_then_given_up(tmp_path: Path) -> None:
    ws, storage, sid = make_stage(tmp_path)
    points = units(GRID, 1)[:1]
    enqueue(storage, sid, ws, "mu_search", "mu", GRID.grid, points, max_retries=1)
    first = claim(storage, sid)
    assert first is not None and claim(storage, sid) is None
    assert finish(storage, sid, first.number, TrialState.FAIL, None, {"reason": "boom"})
    assert not finish(storage, sid, first.number, TrialState.COMPLETE, 1.0, {})  # already finished: refused
    enqueue(storage, sid, ws, "mu_search", "mu", GRID.grid, points, max_retries=1)
    second = claim(storage, sid)
    assert second.user_attrs == {"attempt": 2, "trial_dir": first.user_attrs["trial_dir"]}
    storage.set_trial_user_attr(second._trial_id, "budget", 3)  # successive halving: the retry keeps the budget
    finish(storage, sid, second.number, TrialState.FAIL, None, {"reason": "cancelled by `sweeper cancel`"})
    enqueue(storage, sid, ws, "mu_search", "mu", GRID.grid, points, max_retries=1)  # a cancel is not a failure
    third = claim(storage, sid)
    assert third.user_attrs["attempt"] == 2 and third.user_attrs["budget"] == 3
    finish(storage, sid, third.number, TrialState.FAIL, None, {"reason": "boom again"})
    enqueue(storage, sid, ws, "mu_search", "mu", GRID.grid, points, max_retries=1)  # 2 failures > max_retries=1
    assert claim(storage, sid) is None
    assert [t.state for t in stage_trials(storage, sid)[(("mu", "0.2"), ("repeat", "0"))]] == [TrialState.FAIL] * 3


CLAIMER = """
import sys, optuna
from sweeper.core.workspace import Workspace, claim
ws = Workspace.resolve(sys.argv[1])
storage = optuna.storages.get_storage(ws.storage)
sid = storage.get_study_id_from_name("race")
got = []
while True:
    with ws.claim_lock():
        t = claim(storage, sid)
    if t is None:
        break
    got.append(t.number)
print(" ".join(map(str, got)))
"""


def test_two_processes_never_claim_the_same_trial(tmp_path: Path) -> None:
    ws, storage, _ = make_stage(tmp_path)
    study = optuna.create_study(storage=storage, study_name="race")
    for i in range(60):
        study.enqueue_trial({"x": i})
    procs = [
        subprocess.Popen([sys.executable, "-c", CLAIMER, str(ws.root)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    claimed = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(map(int, claimed[0] + claimed[1])) == list(range(60))  # each trial exactly once, none left


def test_config_hash_ignores_bookkeeping_only() -> None:
    base = build_config({"preset": "smoke"}).to_dict()
    same = build_config(
        {"preset": "smoke", "train.device": "cpu", "train.log_every": 1, "data.num_workers": 2}
    ).to_dict()
    other = build_config({"preset": "smoke", "mu": math.inf}).to_dict()
    assert config_hash(base) == config_hash(same) != config_hash(other)


def test_rank_prefers_low_lpips_then_high_psnr() -> None:
    trials: list[dict[str, float]] = [
        {"lpips": 0.2, "psnr": 30},
        {"lpips": 0.1, "psnr": 20},
        {"lpips": 0.1, "psnr": 25},
        {"psnr": 40},
    ]
    means = [{f"mean/{k}": v for k, v in m.items()} for m in trials]
    assert sorted(range(4), key=lambda i: rank("lpips", means[i])) == [2, 1, 0, 3]
    assert sorted(range(4), key=lambda i: rank("psnr", means[i])) == [3, 0, 2, 1]


def test_owner_liveness_uses_pid_and_start_time() -> None:
    me = owner_id()
    assert owner_alive(me)
    host, pid, _ = me.rsplit(":", 2)
    assert owner_alive(f"{host}:{pid}:1") is False  # same pid, another start time: a recycled pid
    assert owner_alive(f"elsewhere:{pid}:1") is None  # another machine: cannot tell here, its lease decides


def test_config_hash_drops_beta_only_where_no_resnet_loss_is_built() -> None:
    def h(**overrides: object) -> str:
        return config_hash(build_config({"preset": "smoke", **overrides}).to_dict())

    assert h(mu=math.inf, beta="beta1_3") == h(mu=math.inf, beta="beta4_3")  # VGG loss only: beta unused
    assert h(**{"loss.perceptual": "vgg", "beta": "beta2_4"}) == h(**{"loss.perceptual": "vgg", "beta": "beta3_6"})
    assert h(mu=0.5, beta="beta1_3") != h(mu=0.5, beta="beta4_3")
    assert h(**{"loss.perceptual": "static", "mu": math.inf, "beta": "beta1_3"}) != h(
        **{"loss.perceptual": "static", "mu": math.inf, "beta": "beta4_3"}
    )
