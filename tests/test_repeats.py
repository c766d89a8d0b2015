"""Repeats as a study axis (issue 18): seeds per repeat, common random numbers across points, and the
`repeats=` settings of the command line and study files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sweeper.core import studies
from sweeper.core.identity import config_hash
from sweeper.core.overrides import parse, stage_repeats
from sweeper.core.repeats import grid_key, mean_metrics, unit_config, units
from trainer.config import build_config
from trainer.data import TrainBatches
from trainer.errors import UserError
from trainer.train import Gan

MU = studies.load("mu_search").stages[0]
BASE = {"arch": "srgan", "beta": "beta1_3", "preset": "smoke", "weights": "random", "seed": 7,
        "model.num_feat": 8, "model.num_blocks": 1}  # fmt: skip


def trial_config(mu: str, repeat: int):
    return build_config(unit_config(BASE, MU, {"mu": mu, "repeat": repeat}))


def test_repeat_r_of_every_point_trains_with_seed_plus_r_and_its_own_identity() -> None:
    configs = {(mu, r): trial_config(mu, r) for mu in ("0.5", "inf") for r in range(3)}
    assert {k: c.seed for k, c in configs.items() if k[0] == "0.5"} == {("0.5", 0): 7, ("0.5", 1): 8, ("0.5", 2): 9}
    assert len({config_hash(c.to_dict()) for c in configs.values()}) == 6  # per repeat: reuse is per (config, seed)
    assert [(u.folder, u.params) for u in units(MU, 2)[:3]] == [("0", {"mu": "0.2", "repeat": 0}), ("0-r1", {"mu": "0.2", "repeat": 1}),
                                                                 ("1", {"mu": "0.5", "repeat": 0})]  # fmt: skip
    assert grid_key({"mu": "0.5", "repeat": 2}) == grid_key({"mu": "0.5"}) == (("mu", "0.5"),)


def test_repeat_r_of_two_points_starts_from_the_same_networks_and_sees_the_same_batches(tmp_path: Path) -> None:
    """Common random numbers: within a repeat, two grid points differ only by their settings."""

    def start(mu: str, repeat: int) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
        cfg = trial_config(mu, repeat)
        gan = Gan.build(cfg, torch.device("cpu"))
        batches = TrainBatches(cfg, tmp_path, torch.device("cpu"), False)
        return {**{f"g.{k}": v for k, v in gan.g.state_dict().items()}, **{f"d.{k}": v for k, v in gan.d.state_dict().items()}}, \
            tuple(t for _ in range(2) for t in next(batches))  # fmt: skip

    a, b, other = start("0.5", 1), start("inf", 1), start("0.5", 2)
    assert a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    assert all(torch.equal(x, y) for x, y in zip(a[1], b[1], strict=True))  # the first two (LR, HR) batches
    assert not torch.equal(a[0]["g.conv_first.weight"], other[0]["g.conv_first.weight"])
    assert not torch.equal(a[1][1], other[1][1])


def test_repeats_from_the_command_line_or_the_study_file(tmp_path: Path) -> None:
    assert stage_repeats(parse([]), MU) == (1, studies.MAX_REPEATS)
    assert stage_repeats(parse(["repeats=3"]), MU) == (3, studies.MAX_REPEATS)
    assert stage_repeats(parse(["repeats=auto", "max_repeats=4"]), MU) == ("auto", 4)
    path = tmp_path / "r.yaml"
    path.write_text("description: r\nrepeats: 2\nstages:\n  - name: a\n    grid: {mu: [1, 2]}\n"
                    "  - name: b\n    repeats: auto\n    max_repeats: 3\n    grid: {mu: [1, 2]}\n")  # fmt: skip
    a, b = studies.parse_study("r", path).stages
    assert (a.repeats, b.repeats, b.max_repeats) == (2, "auto", 3)
    assert stage_repeats(parse(["repeats=4"]), b) == (4, 3)  # the command line wins for every stage


@pytest.mark.parametrize(("tokens", "message"), [
    (["repeats=0"], "repeats=0: expected a whole number >= 1"),
    (["repeats=some"], "or auto (racing)"),
    (["max_repeats=1"], "max_repeats=1: expected a whole number >= 2"),
])  # fmt: skip
def test_bad_repeats_are_one_line_errors(tokens: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(tokens)


def test_racing_and_halving_do_not_combine() -> None:
    with pytest.raises(UserError, match="do not combine"):
        stage_repeats(parse(["repeats=auto", "scheduler=sha"]), MU)


def test_a_points_metrics_are_the_mean_over_its_repeats() -> None:
    assert mean_metrics([{"mean/psnr": 30.0, "mean/lpips": 0.2}, {"mean/psnr": 31.0}]) == {"mean/psnr": 30.5}


def test_each_points_aggregates_go_to_all_its_repeats_runs() -> None:
    """conclude's MLflow numbers per run: the point's means over repeats, its repeats, and the verdict's
    standing and interval for the point, found through its label (synthetic per-image values: mu=0.5 is 1 dB
    better on every image and seed)."""
    import numpy as np
    import optuna

    from sweeper.analysis import stats
    from sweeper.search.stage import point_aggregates

    space = {"mu": optuna.distributions.CategoricalDistribution(["0.5", "inf"]),
             "repeat": optuna.distributions.IntDistribution(0, 9)}  # fmt: skip
    trials = [optuna.trial.create_trial(params={"mu": mu, "repeat": r}, distributions=space, value=0.0,
                                        user_attrs={"mlflow_run_id": f"{mu}-{r}"}) for mu in ("0.5", "inf") for r in (0, 1, 2)]  # fmt: skip
    by_point = {grid_key(t.params): [u for u in trials if u.params["mu"] == t.params["mu"]] for t in trials}
    means = {k: {"mean/psnr": 26.0 if ("mu", "0.5") in k else 25.0, "Set5/psnr": 0.0} for k in by_point}
    m = 25 + np.random.default_rng(0).normal(0, 0.01, (2, 3, 10)) + np.array([1.0, 0.0])[:, None, None]
    verdict = stats.decide([("psnr", m, True)], ["mu=0.5", "mu=inf"])
    out = point_aggregates(by_point, means, {"mu=0.5": trials[0], "mu=inf": trials[3]}, verdict)
    assert set(out) == {t.user_attrs["mlflow_run_id"] for t in trials}
    numbers, where = out["inf-2"]
    behind = verdict.comparisons[0].rows[1]
    assert where == "behind" and out["0.5-1"][1] == "best" and numbers["point/repeats"] == 3
    assert numbers == {"point/mean/psnr": 25.0, "point/repeats": 3.0, "point/behind_best/psnr": behind.diff,
                       "point/half_width/psnr": behind.half_width}  # fmt: skip


def test_plan_prices_repeats_and_racing_before_the_training_data_is_there(tmp_path: Path) -> None:
    """Issue 18: planning is what a user does before downloading the training set; it never needs it."""
    from sweeper.search.plan import plan
    from trainer.data import prepared_data_id, subimage_count

    root = tmp_path / "data"
    (root / "Set5").mkdir(parents=True)  # validation only: no training set under this root yet
    paper = build_config({"preset": "paper", "weights": "random", "data.root": str(root)})
    assert subimage_count(paper, "DIV2K", tmp_path) == (32592, "known count (not in the data root yet)")
    assert prepared_data_id(paper, tmp_path) is None
    smoke = build_config({"preset": "smoke"})
    assert subimage_count(smoke, "train", tmp_path)[1] == "the headers of its 6 images"
    common = [
        "study=mu_search",
        "preset=smoke",
        "weights=random",
        f"data.root={root}",
        f"workspace={tmp_path / 'ws'}",
        "model.num_feat=8",
    ]
    (fixed,), _ = plan([*common, "repeats=3"])
    assert (fixed.points, fixed.repeats, fixed.trainings, fixed.none_iters) == (7, "3", 21, 21 * fixed.iters)
    assert fixed.data == "T91: ? sub-images (not in the data root yet); BSD200: ? sub-images (not in the data root yet)"
    (raced,), _ = plan([*common, "repeats=auto", "max_repeats=4"])
    assert raced.trainings == 28 and raced.repeats.startswith("auto (at most 4")
    (capped,), _ = plan([*common, "repeats=auto", "max_repeats=4", "max_trainings=10"])
    assert (capped.points, capped.trainings) == (7, 10) and "10 trainings under max_trainings=10" in capped.repeats


@pytest.mark.slow
def test_halving_promotes_a_point_with_all_its_repeats_on_their_mean(tmp_path: Path) -> None:
    """scheduler=sha with repeats=2 on two points: both repeats of the point with the better mean rung score go
    on to the last rung together; both repeats of the other are stopped at the first rung."""
    import optuna
    from cluster_helpers import env_for, sweeper, tiny, write_study

    env, ws = env_for(tmp_path), tmp_path / "ws"
    write_study(tmp_path, "halves", ["0.5", "inf"])
    done = sweeper(["run", "study=halves", f"workspace={ws}", *tiny("train.val_every=1", "train.from_scratch=true"),
                    "repeats=2", "scheduler=sha", "max_retries=0"], env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    trials = optuna.load_study(study_name="halves.mu", storage=f"sqlite:///{ws / 'optuna.db'}").get_trials(
        deepcopy=False
    )
    states = {(t.params["mu"], t.params["repeat"]): t.state.name for t in trials}
    assert len(trials) == 4 and sorted(states.values()) == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"], states
    winner = next(mu for (mu, _), state in states.items() if state == "COMPLETE")
    assert states[winner, 0] == states[winner, 1] == "COMPLETE"
    rung = {
        mu: sum(t.user_attrs["rungs"]["1"]["mean/psnr"] for t in trials if t.params["mu"] == mu) / 2
        for mu in ("0.5", "inf")
    }
    assert rung[winner] == max(rung.values()), rung  # the better mean over the two seeds at the first rung


def test_a_rerun_with_another_selection_rule_judges_the_trained_trials_again(tmp_path: Path) -> None:
    """`select.*` belongs to `sweeper run` (status and report refuse it): on a finished stage, a re-run with another
    rule trains nothing and records the new verdict. select.min_effect=100 (dB) ties the two points whatever they
    scored, so the tie-break alone names the winner: the simplest setting, mu=inf, or the better mean."""
    import optuna
    from cluster_helpers import env_for, sweeper, tiny, write_study

    env, ws = env_for(tmp_path), tmp_path / "ws"
    write_study(tmp_path, "judge", ["0.5", "inf"])
    args = ["run", "study=judge", f"workspace={ws}", *tiny("data.val_max_images=2"), "select.min_effect=100"]
    storage = f"sqlite:///{ws / 'optuna.db'}"
    verdicts: dict[str, list] = {}
    trained: dict[int, Any] = {}
    for tie_break in ("best_mean", "simplest", "best_mean"):
        done = sweeper([*args, f"select.tie_break={tie_break}"], env)
        assert done.returncode == 0, done.stderr[-3000:]
        study = optuna.load_study(study_name="judge.mu", storage=storage)
        trials = study.get_trials(deepcopy=False)
        assert len(trials) == 2 and all(t.state.name == "COMPLETE" for t in trials)
        verdicts.setdefault(tie_break, []).append((study.user_attrs["verdict"], study.user_attrs["winner"]["mu"]))
        finished = {t.number: t.datetime_complete for t in trials}
        trained = trained or finished  # the first run's
        assert finished == trained, done.stdout  # the re-runs trained nothing
    (first, best), (again, best_again) = verdicts["best_mean"]
    ((simplest, chosen),) = verdicts["simplest"]
    means = {t.params["mu"]: float(t.value or 0) for t in trials}  # mean psnr (select_by's default for preset=smoke)
    assert first == again and best == best_again == max(means, key=lambda mu: means[mu]), (verdicts, means)
    assert first["kind"] == simplest["kind"] == "tie" and chosen == "inf", verdicts
    assert "taken by tie_break=simplest" in simplest["summary"] and "taken by tie_break=best_mean" in first["summary"]
