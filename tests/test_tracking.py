"""MLflow logging of a trial folder (real SQLite tracking store): layout, steps, idempotency."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from mlflow import MlflowClient

from sweeper.core.mlflow_names import experiment
from sweeper.search import tracking
from trainer.config import build_config


def trial_folder(path: Path) -> dict:
    """A finished trial folder as the trainer leaves it (docs/ARCHITECTURE.md, "Trial folder")."""
    config = build_config({"preset": "smoke", "mu": float("inf")}).to_dict()
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [
        {"step": 2, "kind": "train", "l_g": 0.5, "l_d": 0.7},
        {"step": 4, "kind": "train", "l_g": 0.4, "l_d": 0.6},
        {"step": 4, "kind": "val", "set": "Set5", "psnr": 20.0, "ssim": 0.5, "lpips": None},
        {"step": 4, "kind": "val", "set": "Set14", "psnr": 22.0, "ssim": 0.7, "lpips": None},
    ]
    (path / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "kin'
    )  # cut by a kill
    (path / "samples").mkdir()
    (path / "samples" / "Set5_0.png").write_bytes(b"png")
    result = {"status": "complete", "reason": None, "final": {"Set5": {"psnr": 20.0, "ssim": 0.5, "lpips": None},
              "Set14": {"psnr": 22.0, "ssim": 0.7, "lpips": None}}, "weights": {"extractors": "random", "lpips": "unavailable"},
              "iters": 4, "duration_s": 3.0, "checkpoint": None}  # fmt: skip
    (path / "result.json").write_text(json.dumps(result))
    return config


TAGS = {"sweeper.study": "mu_search", "sweeper.stage": "mu", "sweeper.trial_number": "6"}


def test_a_trial_is_logged_once_in_the_documented_layout(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = experiment(client, "mu_search", tmp_path / "artifacts")
    assert experiment(client, "mu_search", tmp_path / "artifacts", "Table 1: the mu grid") == exp
    assert client.get_experiment(exp).tags["mlflow.note.content"] == "Table 1: the mu grid"  # the UI's description
    parent = tracking.stage_run(client, exp, "mu_search", "mu", {"sweeper.preset": "smoke"})
    assert tracking.stage_run(client, exp, "mu_search", "mu", {}) == parent
    config = trial_folder(tmp_path / "trial")
    run_id = tracking.log_trial(client, exp, parent, tmp_path / "trial", config, TAGS)
    assert tracking.log_trial(client, exp, parent, tmp_path / "trial", config, TAGS) == run_id  # idempotent

    run = client.get_run(run_id)
    assert run.info.run_name == "mu=inf beta3_6 · mu" and run.info.status == "FINISHED"  # the stage in the name
    assert client.get_run(parent).info.run_name == "mu_search · mu"
    ended = (tmp_path / "trial" / "result.json").stat().st_mtime * 1000  # the trial's real times, not the logging's
    assert abs(run.info.end_time - ended) < 2 and abs(run.info.start_time - (ended - 3000)) < 2
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["sweeper.kind"] == "trial"
    assert run.data.tags["sweeper.weights"] == "random" and run.data.tags["sweeper.lpips"] == "unavailable"
    assert (
        run.data.params["mu"] == "inf"
        and run.data.params["perceptual"] == "dp"
        and run.data.params["preset"] == "smoke"
    )
    recipe = {k: run.data.params[k] for k in ("loss.gan", "model.skip", "metrics.space", "train.from_scratch")}
    assert recipe == {
        "loss.gan": "vanilla",
        "model.skip": "bilinear",
        "metrics.space": "rgb",
        "train.from_scratch": "True",
    }  # smoke
    assert run.data.metrics["mean/psnr"] == 21.0 and "mean/lpips" not in run.data.metrics
    assert run.data.metrics["rounded/mean/ssim"] == round(run.data.metrics["mean/ssim"], 4)  # for the UI's columns
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "train/l_g")]
    assert sorted(history) == [(2, 0.5), (4, 0.4)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "Set14/ssim")] == [(4, 0.7)]
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for a in client.list_artifacts(run_id, "samples")
    }
    assert {"config.yaml", "result.json", "samples/Set5_0.png"} <= artifacts
    assert len(client.search_runs([exp], "tags.`sweeper.kind` = 'trial'")) == 1


def test_a_half_logged_run_is_completed_not_replaced(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = experiment(client, "mu_search", tmp_path / "artifacts")
    config = trial_folder(tmp_path / "trial")
    key = tracking.trial_key(tmp_path / "trial", TAGS)
    crashed = client.create_run(exp, tags={**TAGS, **key}).info.run_id  # a crash before set_terminated
    assert tracking.log_trial(client, exp, None, tmp_path / "trial", config, TAGS) == crashed
    assert client.get_run(crashed).info.status == "FINISHED"
    assert [r.info.run_id for r in client.search_runs([exp])] == [crashed]


def train_lines(steps: range, t0: float, l_g: float = 0.5) -> str:
    return "".join(json.dumps({"step": s, "kind": "train", "l_g": l_g, "l_d": 0.7, "lr": 1e-4, "step_s": 0.2,
                               "time": t0 + s}) + "\n" for s in steps)  # fmt: skip


def test_live_curves_go_to_the_trials_one_run_once_across_restarts_and_resumes(tmp_path: Path) -> None:
    """Issue 22 item 6: the training-log lines of a running trial reach its MLflow run as step metrics while it
    trains; a restarted sweeper goes on from the step the run holds, a resumed job's rewritten steps (after its
    checkpoint) are not logged twice, a batch logged again after a crash adds nothing, and the end completes
    the same run."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = experiment(client, "mu_search", tmp_path / "artifacts")
    folder = tmp_path / "trial"
    config = trial_folder(folder)
    (folder / "result.json").unlink()
    log = folder / "metrics.jsonl"
    log.write_text(train_lines(range(1, 4), 1.7e9))
    live = tracking.live_run(client, exp, None, folder, config, TAGS)
    assert live is not None
    run_id, step = live
    assert step == 0 and client.get_run(run_id).info.status == "RUNNING"
    assert client.get_run(run_id).info.run_name == "mu=inf beta3_6 · mu"
    assert tracking.forward(client, run_id, tracking.log_records(folder), 0, 0) == 3
    assert tracking.live_run(client, exp, None, folder, config, TAGS) == (run_id, 3)  # a restarted sweeper
    log.write_text(train_lines(range(1, 3), 1.7e9) + train_lines(range(3, 6), 1.8e9, l_g=0.4))  # resumed at 2
    assert tracking.forward(client, run_id, tracking.log_records(folder), 3, 0) == 5
    assert tracking.forward(client, run_id, tracking.log_records(folder), 3, 0) == 5  # again: a crash before noting it
    tracking.kill_stage_runs(client, "mu_search")  # `sweeper cancel`: the live run ends KILLED, a re-run resumes it
    assert client.get_run(run_id).info.status == "KILLED"
    assert tracking.live_run(client, exp, None, folder, config, {**TAGS, "sweeper.trial_number": "9"}) == (run_id, 5)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags["sweeper.trial_number"] == "9"  # the new attempt's
    trial_folder(tmp_path / "done")  # its result.json and validation lines, then the end
    log.write_text(log.read_text() + (tmp_path / "done" / "metrics.jsonl").read_text())
    (folder / "result.json").write_text((tmp_path / "done" / "result.json").read_text())
    assert tracking.log_trial(client, exp, None, folder, config, TAGS) == run_id
    history = {k: sorted(m.step for m in client.get_metric_history(run_id, k)) for k in ("train/l_g", "train/step_s")}
    assert history == {"train/l_g": [1, 2, 3, 4, 5], "train/step_s": [1, 2, 3, 4, 5]}, history
    assert [m.value for m in sorted(client.get_metric_history(run_id, "train/l_g"), key=lambda m: m.step)][2] == 0.5
    assert "train/time" not in client.get_run(run_id).data.metrics
    assert client.get_run(run_id).info.status == "FINISHED" and client.get_run(run_id).data.metrics["mean/psnr"] == 21
    assert [r.info.run_id for r in client.search_runs([exp])] == [run_id]


def test_final_means_skip_metrics_missing_on_any_set() -> None:
    result = {"final": {"A": {"psnr": 10.0, "lpips": 0.1}, "B": {"psnr": 20.0, "lpips": None}}}
    assert tracking.final_means(result) == {"mean/psnr": 15.0}


def test_a_rerun_may_change_the_stage_winner(tmp_path: Path) -> None:
    """Issue 9 item 4: the winner lives in tags, so a re-run that picks another winner records it (params
    cannot change); exactly one trial run stays `sweeper.winner=true`, and a stage run resumes RUNNING."""
    import mlflow_layout

    _, client = mlflow_layout.store(tmp_path)
    final = mlflow_layout.scores(25.0, 0.7, 0.2)
    parent, ids = mlflow_layout.log_stage(client, tmp_path, "mu_search", "mu",
                                          [{"arch": "srgan", "mu": m, "final": final} for m in (0.5, 5.0)], winner=0)  # fmt: skip
    experiment = client.get_run(parent).info.experiment_id
    assert tracking.stage_run(client, experiment, "mu_search", "mu", {}) == parent
    assert client.get_run(parent).info.status == "RUNNING"  # the stage resumes
    tracking.finish_stage(client, "mu_search", "mu", parent, ids[1], {"mu": "5", "beta": "beta1_3"})
    stage = client.get_run(parent)
    assert stage.info.status == "FINISHED" and stage.data.tags["sweeper.winner_run_id"] == ids[1]
    assert (stage.data.tags["winner.mu"], stage.data.tags["winner.beta"]) == ("5", "beta1_3")
    assert [client.get_run(i).data.tags["sweeper.winner"] for i in ids] == ["false", "true"]


def test_a_points_aggregates_are_on_each_of_its_runs_and_in_the_trials_view(tmp_path: Path) -> None:
    """Issue 18: the mean over a point's repeats, their number and the interval of its difference to the best
    go on every repeat's run (the trials view's columns), and a later conclusion's values replace them."""
    import mlflow_layout

    from sweeper.core.mlflow_names import VIEW_TAG

    _, client = mlflow_layout.store(tmp_path)
    trials = [
        {"arch": "srgan", "mu": 0.5, "seed": seed, "final": mlflow_layout.scores(25.0 + seed, 0.7, 0.2)}
        for seed in (0, 1)
    ]
    parent, ids = mlflow_layout.log_stage(client, tmp_path, "mu_search", "mu", trials, winner=0, select_by="psnr")
    numbers = {
        "point/mean/psnr": 25.123456,
        "point/repeats": 2.0,
        "point/behind_best/psnr": 0.0,
        "point/half_width/psnr": 0.0,
    }
    tracking.log_points(client, dict.fromkeys(ids, (numbers, "tied")))
    for run_id in ids:
        run = client.get_run(run_id).data
        assert {k: run.metrics[k] for k in numbers} == numbers and run.metrics[
            "rounded/point/mean/psnr"
        ] == 25.12  # DECIMALS
        assert run.tags["sweeper.point_verdict"] == "tied"
    tracking.log_points(client, {ids[0]: ({**numbers, "point/repeats": 3.0}, "best")})  # concluded again
    again = client.get_run(ids[0]).data
    assert again.metrics["point/repeats"] == 3.0 and again.tags["sweeper.point_verdict"] == "best"
    experiment = client.get_run(parent).info.experiment_id
    columns = json.loads(json.loads(client.get_experiment(experiment).tags[VIEW_TAG])["state"])["selectedColumns"]
    assert {"metrics.`rounded/point/mean/psnr`", "metrics.`point/half_width/psnr`", "metrics.`point/repeats`",
            "tags.`sweeper.point_verdict`"} <= set(columns)  # fmt: skip
