"""Racing over seeds (`repeats=auto`): the round decision on synthetic metrics with a planted effect, with
none and under a budget (pure functions, fast), and a racing stage stopped by its budget end to end (slow,
small; the crash matrix races to max_repeats)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
from cluster_helpers import env_for, sweeper, tiny, trials, write_study
from mlflow import MlflowClient

from sweeper.analysis import racing, stats
from sweeper.core.overrides import check_max_trainings, parse
from sweeper.core.studies import load
from trainer.errors import UserError

MU = load("mu_search").stages[0]

SETS = ["Set5"] * 5 + ["Set14"] * 14


def synthetic(effects: list[float], repeats: int, seed: int) -> np.ndarray:
    """m[point, repeat, image] (PSNR-like, higher is better): image difficulty + a seed's luck shared by every
    point (common random numbers) + each point's planted effect + small noise."""
    rng = np.random.default_rng(seed)
    image = rng.normal(30, 2, len(SETS))
    luck = rng.normal(0, 0.05, (repeats, 1))
    noise = rng.normal(0, 0.01, (len(effects), repeats, len(SETS)))
    return image + luck + np.array(effects)[:, None, None] + noise


def run_race(
    m: np.ndarray, max_repeats: int, max_trainings: int | None = None
) -> tuple[racing.Decision, list[list[int]]]:
    """The race a stage would run on m's points and seeds: round k sees seeds 0..k of the points still racing."""
    rounds = [list(range(m.shape[0]))]
    while True:
        alive = rounds[-1]
        d = racing.decide(m[alive, : len(rounds)], True, [str(p) for p in alive], SETS, max_repeats, 0.0,
                          racing.trainings(rounds), max_trainings)  # fmt: skip
        kept = [alive[p] for p in d.alive]
        if d.done:
            return racing.Decision(kept, [], True, d.reason), rounds
        rounds.append(kept)


def test_a_clear_winner_is_found_with_fewer_trainings_than_fixed_repeats() -> None:
    m = synthetic([0.0, -0.05, -0.06, -0.08], repeats=5, seed=1)
    end, rounds = run_race(m, max_repeats=5)
    fixed = stats.compare(m, True, ["0", "1", "2", "3"], SETS)
    assert end.alive == [0] and fixed.kind == "winner" and fixed.best.label == "0"  # the same winner as repeats=5
    assert racing.trainings(rounds) < 4 * 5, rounds
    assert rounds[0] == rounds[1] == [0, 1, 2, 3]  # nobody is dropped on one seed


def test_no_effect_ends_as_a_tie_at_max_repeats() -> None:
    m = synthetic([0.0, 0.0, 0.0], repeats=4, seed=2)
    end, rounds = run_race(m, max_repeats=4)
    assert len(rounds) == 4 and len(end.alive) == 3 and "max_repeats=4 reached" in end.reason, (rounds, end)


def test_the_budget_stops_a_race_before_a_round_it_cannot_pay_for() -> None:
    """max_trainings=10 over 4 equal points: seeds 0 and 1 of every point (8), then the next round's 4 would
    make 12: the race stops on its budget with all four tied, never giving seed 2 to only some of them."""
    m = synthetic([0.0, 0.0, 0.0, 0.0], repeats=5, seed=4)
    end, rounds = run_race(m, max_repeats=5, max_trainings=10)
    assert rounds == [[0, 1, 2, 3]] * 2 and racing.trainings(rounds) == 8, rounds
    assert end.alive == [0, 1, 2, 3] and end.reason.startswith("budget spent: max_trainings=10, 8 spent and the next "
                                                               "round needs 4"), end  # fmt: skip
    clear = synthetic([0.0, -0.05, -0.06, -0.08], repeats=5, seed=1)  # a budget the race does not reach changes nothing
    assert run_race(clear, 5, max_trainings=19) == run_race(clear, 5)


def test_max_trainings_is_checked_against_the_study() -> None:
    with pytest.raises(UserError, match="max_trainings=0: expected a whole number >= 1"):
        parse(["max_trainings=0"])
    with pytest.raises(UserError, match="max_trainings=9 caps racing, and no stage races: pass repeats=auto too"):
        check_max_trainings(parse(["max_trainings=9", "repeats=2"]), [MU])
    with pytest.raises(UserError, match="max_trainings=6 is fewer than stage mu's 7 points.*>= 7"):
        check_max_trainings(parse(["max_trainings=6", "repeats=auto"]), [MU])
    check_max_trainings(parse(["max_trainings=7", "repeats=auto"]), [MU])


def test_one_point_or_one_seed() -> None:
    one = racing.decide(synthetic([0.0], 1, 3), True, ["a"], SETS, 3)
    assert one.done and one.alive == [0]
    first = racing.decide(synthetic([0.0, -5.0], 1, 3), True, ["a", "b"], SETS, 3)
    assert not first.done and first.alive == [0, 1] and "no point is dropped" in first.reason


@pytest.mark.slow
def test_a_racing_stage_stops_on_its_budget_says_so_and_a_rerun_adds_no_trial(tmp_path: Path) -> None:
    """Two points, max_repeats=2, max_trainings=2: round 1 trains seed 0 of both; round 2 would need 2 more, so
    the race ends on its budget (recorded before anything else is enqueued) and the verdict says so."""
    env, ws = env_for(tmp_path), tmp_path / "ws"
    write_study(tmp_path, "race", ["0.5", "inf"])
    args = ["run", "study=race", f"workspace={ws}", *tiny(), "repeats=auto", "max_repeats=2", "max_trainings=2"]
    done = sweeper(args, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "budget spent: max_trainings=2, 2 spent and the next round needs 2" in done.stdout, done.stdout
    assert "(2 trainings; repeats=2 would have taken 4: 2 saved)" in done.stdout, done.stdout
    storage = f"sqlite:///{ws / 'optuna.db'}"
    first = trials(storage, "race")
    assert sorted((t.params["mu"], t.params["repeat"], t.state.name) for t in first) == [
        ("0.5", 0, "COMPLETE"), ("inf", 0, "COMPLETE")]  # fmt: skip
    attrs = optuna.load_study(study_name="race.mu", storage=storage).user_attrs
    assert (
        attrs["race"]["rounds"] == [[0, 1]] and attrs["race"]["trainings"] == 2 and attrs["race"]["survivors"] == [0, 1]
    )
    assert "racing ended: budget spent" in attrs["verdict"]["summary"]  # status, MLflow and the report show it
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    for t in first:  # each point's aggregates on its runs, for the trials view (one seed of one image per set here)
        run = client.get_run(t.user_attrs["mlflow_run_id"]).data
        assert run.metrics["point/repeats"] == 1 and run.metrics["point/mean/psnr"] == run.metrics["mean/psnr"]
        assert run.tags["sweeper.point_verdict"] == attrs["verdict"]["kind"] == "untested", run.tags
    again = sweeper(args, env)
    assert again.returncode == 0 and len(trials(storage, "race")) == 2, again.stderr[-3000:]
