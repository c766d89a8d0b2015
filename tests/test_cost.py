"""The cost ledger's sums, `sweeper plan` against a finished study's real ledgers, `sweeper rank-check` on a
small real study (scheduler=none), and the report's cost and rank-check sections."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from cluster_helpers import env_for, write_study
from mlflow import MlflowClient
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import TrialState, create_trial

from sweeper.analysis import correlate, ledger, rankcheck, stats
from sweeper.core import halving
from sweeper.core.overrides import Options, parse
from sweeper.search.gpus import thread_share
from trainer.errors import UserError
from trainer.ledger import record_lost

# Four mu values, a small generator, 6 iterations validated every 2: three points on each curve.
SMALL = ["preset=smoke", "weights=random", "model.num_feat=16", "model.num_blocks=2", "train.iters=6", "train.val_every=2",
         "train.from_scratch=false", "train.pretrain_iters=2", "train.milestones=[3]", "train.pretrain_milestones=[1]", "executor.n_jobs=2"]  # fmt: skip
MUS = ["0.5", "1", "10", "inf"]


def line(
    a: int, b: int, wall: float, device_s: float, pretrain: str = "none", pre_iters: int = 0, pre_s: float = 0.0
) -> dict:
    return {"from_step": a, "to_step": b, "iters": b - a, "wall_s": wall, "device": "cpu", "device_s": device_s,
            "pretrain": pretrain, "pretrain_iters": pre_iters, "pretrain_s": pre_s}  # fmt: skip


def test_repeated_iterations_count_only_overlaps() -> None:
    assert ledger.repeated_iters([line(0, 10, 1, 1), line(10, 20, 1, 1)]) == 0  # a clean resume
    assert ledger.repeated_iters([line(0, 10, 1, 1), line(6, 20, 1, 1)]) == 4  # resumed from an older checkpoint
    assert ledger.repeated_iters([line(0, 10, 1, 1), line(0, 4, 1, 1), line(4, 12, 1, 1)]) == 10


def test_a_stalled_jobs_time_is_added_once(tmp_path: Path) -> None:
    """`record_lost` (issue 19): a job killed for stalling after 10 s whose own line recorded 3 s of them adds a
    line of 7 s at its rate and step, once however often it is called; without any line, 1 device-s per s."""
    earlier = {**line(0, 4, 2.0, 4.0), "devices": 1, "share": 2}
    own = {**line(4, 6, 3.0, 6.0), "devices": 1, "share": 2}
    (tmp_path / "ledger.jsonl").write_text(json.dumps(earlier) + "\n" + json.dumps(own) + "\n")
    for _ in range(2):
        record_lost(tmp_path, 1, 10.0, "batch.0")
    lines = ledger.read(tmp_path)
    assert lines[:2] == [earlier, own] and len(lines) == 3
    assert {k: lines[2][k] for k in ("from_step", "to_step", "iters", "wall_s", "device_s", "device", "lost")} == {
        "from_step": 6, "to_step": 6, "iters": 0, "wall_s": 7.0, "device_s": 14.0, "device": "cpu", "lost": "batch.0"}  # fmt: skip
    totals = ledger.Totals().add(lines)
    assert (totals.wall_s, totals.device_s, totals.iters, totals.unit) == (12.0, 24.0, 6, "CPU core-s")
    record_lost(tmp_path / "none", 0, 5.0, "other.0")
    (fresh,) = ledger.read(tmp_path / "none")
    assert (fresh["wall_s"], fresh["device_s"], fresh["device"]) == (5.0, 5.0, None)
    assert ledger.Totals().add([fresh]).unit == "device-s" and ledger.Totals().add([fresh, own]).unit == "CPU core-s"


def test_ledger_sums_and_naive_protocol(tmp_path: Path) -> None:
    """A real Optuna storage: 3 grid points, one trained in two segments, one reused (no ledger), one failed once."""
    storage = optuna.storages.InMemoryStorage()
    sid = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s.mu")
    dist: dict[str, BaseDistribution] = {"mu": CategoricalDistribution(["1", "2", "3"])}
    ledgers = {
        "1": [line(0, 60, 10, 20, "trained", 8, 2.0), line(60, 100, 5, 10)],
        "2": [],
        "3": [line(0, 100, 12, 24, "reused")],
    }
    for k, (mu, lines) in enumerate(ledgers.items()):
        folder = tmp_path / str(k)
        folder.mkdir()
        (folder / "config.yaml").write_text(
            yaml.safe_dump({"train": {"iters": 100, "pretrain_iters": 8, "from_scratch": False}})
        )
        (folder / "ledger.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        for state in (
            (TrialState.FAIL, TrialState.COMPLETE) if mu == "3" else (TrialState.COMPLETE,)
        ):  # two attempts, one folder
            value = 1.0 if state == TrialState.COMPLETE else None
            storage.create_new_trial(
                sid,
                create_trial(
                    state=state,
                    params={"mu": mu},
                    distributions=dist,
                    value=value,
                    user_attrs={"trial_dir": str(folder)},
                ),
            )
    (cost,) = ledger.study_costs(storage, {"mu": sid})
    assert (cost.points, cost.naive_iters, cost.naive_pretrain_iters) == (3, 300, 24)
    t = cost.spent
    assert (t.trials, t.segments, t.iters, t.pretrain_iters, t.pretrain_reused, t.repeated) == (2, 3, 200, 8, 1, 0)
    assert (t.wall_s, t.device_s, t.pretrain_device_s) == (27, 54, 4.0)  # 2 threads: pre-training 2 s wall = 4 core-s
    assert t.gan_rate == pytest.approx(50 / 200) and t.pretrain_rate == pytest.approx(0.5) and t.unit == "CPU core-s"
    mu_row, study_row = ledger.cost_rows([cost])
    assert mu_row["naive_device_s"] == pytest.approx(300 * 0.25 + 24 * 0.5)  # 87
    assert mu_row["device_ratio"] == pytest.approx(54 / 87, abs=1e-3) and mu_row["iters_ratio"] == pytest.approx(
        208 / 324, abs=1e-3
    )
    assert study_row == {**mu_row, "stage": "study"}
    assert (
        ledger.status_lines([cost])[0]
        == "cost mu: 200/300 GAN iters (naive), 8/24 pre-training iters, 0 repeated; 54 CPU core-s = 62% of naive"
    )


def test_snap_and_replay_on_known_curves() -> None:
    assert rankcheck.snap([1, 4, 12], [2, 4, 6, 8, 10, 12]) == [2, 4, 12]
    assert rankcheck.snap([1, 2, 12], [6, 12]) == [6, 12]
    # trial 3 leads at budget 2 and is the only one kept (4 // 3 = 1), but trial 0 wins at the end: halving drops the winner
    curves = {
        0: [{2: (2.0, 0.0), 6: (0.0, 0.0)}],
        1: [{2: (3.0, 0.0), 6: (1.0, 0.0)}],
        2: [{2: (4.0, 0.0), 6: (2.0, 0.0)}],
        3: [{2: (1.0, 0.0), 6: (3.0, 0.0)}],
    }
    check = rankcheck.check_stage("mu", curves, 6, "psnr", Options(eta=3, min_iters=2))
    assert check.budgets == [2, 6] and check.winner == 0 and check.pick == 3
    first, last = check.rungs
    assert (first.alive, first.winner_alive, last.alive, last.winner_alive) == (4, True, 1, False)
    x, y = np.array([2.0, 3, 4, 1]), np.array([0.0, 1, 2, 3])
    assert first.kendall == pytest.approx(correlate.kendall(x, y)) and first.p_kendall == pytest.approx(
        correlate.permutation_p(x, y)[1]
    )
    assert check.halving_iters == halving.iterations_spent([4, 1], [2, 6]) == 12 and check.full_iters == 24
    flat = rankcheck.check_stage(
        "mu", {t: [{2: (1.0, 0.0), 6: (float(t), 0.0)}] for t in range(3)}, 6, "psnr", Options()
    )
    assert flat.rungs[0].undefined and math.isnan(flat.rungs[0].p_kendall)
    assert first.separable == "no intervals (one seed)" and "one seed per point, no intervals" in rankcheck.summary(
        check
    )


def test_rank_check_gives_each_rungs_ranking_intervals_over_repeats() -> None:
    """Six points x three repeats (PSNR; a seed's luck shared by every point, as with common random numbers).
    At budget 2 the points differ by less than the seeds' noise: a tie, and halving stops four of them on noise.
    At budget 6 the two left are 1 dB apart on every seed: separated. The intervals are `stats.compare`'s."""
    rng = np.random.default_rng(0)
    luck = np.array([0.0, 0.5, -0.3])
    early = 20 + luck + rng.normal(0, 0.3, (6, 3)) + np.linspace(0, 0.05, 6)[:, None]
    late = 25 + luck + np.array([0.0, -1.0, -1.0, -1.0, -1.0, -1.0])[:, None] + rng.normal(0, 0.01, (6, 3))
    curves = {t: [{2: (-early[t, r], 0.0), 6: (-late[t, r], 0.0)} for r in range(3)] for t in range(6)}
    labels = {t: f"mu={t}" for t in range(6)}
    check = rankcheck.check_stage("mu", curves, 6, "psnr", Options(eta=3, min_iters=2), labels)
    first, last = check.rungs
    assert check.repeats == 3 and first.alive == 6 and last.alive == 2
    assert first.separable == "tie" and len(first.dropped) == 4 and set(first.dropped_on_noise) <= set(first.dropped)
    assert first.dropped_on_noise, first.comparison
    alive = [t for t in range(6) if labels[t] not in first.dropped]
    assert [t for t in range(6) if labels[t] in [r.label for r in last.comparison.rows]] == alive
    expected = stats.compare(late[alive][:, :, None], True, [labels[t] for t in alive], metric="psnr")
    assert last.separable == "winner" and last.comparison.rows == expected.rows
    assert {r.label: r.mean for r in first.comparison.rows} == pytest.approx(
        {labels[t]: early[t].mean() for t in range(6)}
    )
    rows = rankcheck.interval_rows([check])
    assert len(rows) == 6 + 2 and rows[0]["separated"] == "best" and all(r["low"] <= r["behind_best"] for r in rows)
    assert [r["halving"] for r in rows].count("stops here") == 4 and rows[-2]["halving"] == "picked"
    text = rankcheck.summary(check)
    assert "over 3 repeats" in text and "rung 0 (budget 2): ranks not separable" in text and "rung 1" not in text
    assert "paired t over 3 repeats" in rankcheck.interval_note([check])


def test_rank_check_groups_a_points_repeats(tmp_path: Path) -> None:
    """A point's curves are those of its repeats that every point has (they pair), under its first trial."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s.mu", direction="maximize")
    space = {"mu": CategoricalDistribution(["0.5", "inf"]), "repeat": optuna.distributions.IntDistribution(0, 9)}
    for n, (mu, repeat) in enumerate([("0.5", 0), ("inf", 0), ("0.5", 1), ("inf", 1), ("inf", 2)]):
        folder = tmp_path / str(n)
        folder.mkdir()
        (folder / "config.yaml").write_text("train: {iters: 4}\n")
        lines = [{"step": s, "kind": "val", "set": "Set5", "psnr": 20 + s + n, "lpips": 0.5} for s in (2, 4)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        study.add_trial(create_trial(params={"mu": mu, "repeat": repeat}, distributions=space, value=0.0,
                                     user_attrs={"trial_dir": str(folder)}))  # fmt: skip
    curves, iters, labels = rankcheck.stage_curves(storage, storage.get_study_id_from_name("s.mu"), "psnr")
    assert iters == 4 and labels == {0: "mu=0.5", 1: "mu=inf"}
    assert curves == {0: [{2: (-22.0, 0.5), 4: (-24.0, 0.5)}, {2: (-24.0, 0.5), 4: (-26.0, 0.5)}],
                      1: [{2: (-23.0, 0.5), 4: (-25.0, 0.5)}, {2: (-25.0, 0.5), 4: (-27.0, 0.5)}]}  # fmt: skip


def test_rank_check_refuses_a_halving_stage() -> None:
    storage = optuna.storages.InMemoryStorage()
    sid = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s.mu")
    storage.set_study_user_attr(sid, "scheduler", {"name": "sha", "budgets": [1, 4, 12]})
    with pytest.raises(UserError, match="this stage ran with scheduler=sha: run the study with scheduler=none"):
        rankcheck.stage_curves(storage, sid, "psnr")
    storage.set_study_user_attr(sid, "scheduler", {"name": "none", "budgets": [12]})
    assert rankcheck.stage_curves(storage, sid, "psnr") == ({}, 0, {})


def test_scheduler_options_are_checked() -> None:
    opts = parse(["study=x", "scheduler=sha", "scheduler.eta=4"])
    assert (opts.scheduler, opts.eta, opts.min_iters) == ("sha", 4, None)
    with pytest.raises(UserError, match="scheduler='asha' is not valid; choose one of none, sha"):
        parse(["scheduler=asha"])
    with pytest.raises(UserError, match="scheduler.eta"):
        parse(["scheduler.eta=1"])


def test_plan_names_what_its_hours_count() -> None:
    from sweeper.search.plan import hours_unit

    assert hours_unit({"CPU core-s"}) == "CPU core-hours" and hours_unit({"GPU-s"}) == "GPU-hours"
    assert hours_unit({"GPU-s", "CPU core-s"}) == "device-hours"


# --- a real study -----------------------------------------------------------------------------------------


def sweeper(args: list[str], cwd: Path, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, *flags, "-m", "sweeper.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """`small` (4 mu values) run to the end with scheduler=none, two trials at a time; the modules the sweeper's
    own process imported (`-X importtime`, which its trial processes do not inherit) saved in `imported.txt`."""
    tmp = tmp_path_factory.mktemp("cost")
    env = env_for(tmp) | {"OMP_NUM_THREADS": "1"}
    write_study(tmp, "small", MUS)
    ws = tmp / "ws"
    done = sweeper(["run", "study=small", f"workspace={ws}", *SMALL], tmp, env, "-X", "importtime")
    imported = [ln.rsplit("|", 1)[1].strip() for ln in done.stderr.splitlines() if ln.startswith("import time:")]
    (tmp / "imported.txt").write_text("\n".join(imported))
    return tmp, ws, env


@pytest.mark.slow
def test_the_sweeper_process_of_a_run_never_imports_torch(study) -> None:
    """Trials train in other processes; torch and torchvision would cost every `sweeper run` seconds of CPU."""
    tmp, ws, _ = study
    imported = (tmp / "imported.txt").read_text().split()
    assert "sweeper.search.run" in imported and "trainer.image_sets" in imported  # the run's own modules
    assert not [m for m in imported if m.split(".")[0] in ("torch", "torchvision")]
    assert len(list((ws / "trials").rglob("result.json"))) == len(MUS)  # its trials did train, elsewhere


@pytest.mark.slow
def test_status_totals_match_the_trials_ledgers(study) -> None:
    tmp, ws, env = study
    cost = json.loads(sweeper(["status", "study=small", f"workspace={ws}", "--format", "json"], tmp, env).stdout)[
        "cost"
    ]
    lines = [x for d in sorted((ws / "trials" / "small").glob("*/*")) for x in ledger.read(d)]
    assert len(lines) == 4 and all((x["from_step"], x["to_step"]) == (0, 6) for x in lines)
    assert sorted(x["pretrain"] for x in lines) == ["reused"] * 3 + ["trained"]  # one pre-training, shared by the cache
    share = thread_share(len(os.sched_getaffinity(0)), 2)  # executor.n_jobs=2: each trial got its share of the cores
    assert all(x["device_s"] == pytest.approx(x["wall_s"] * share, rel=1e-3) for x in lines)
    row = cost[-1]
    assert (
        row["stage"],
        row["gan_iters"],
        row["naive_gan_iters"],
        row["pretrain_iters"],
        row["naive_pretrain_iters"],
    ) == ("study", 24, 24, 2, 8)
    assert row["repeated_iters"] == 0 and row["device_s"] == pytest.approx(sum(x["device_s"] for x in lines), abs=0.1)
    text = sweeper(["status", "study=small", f"workspace={ws}"], tmp, env).stdout
    assert "cost mu: 24/24 GAN iters (naive), 2/8 pre-training iters, 0 repeated;" in text


@pytest.mark.slow
def test_plan_agrees_with_the_finished_studys_ledger(study) -> None:
    tmp, ws, env = study
    plan = json.loads(sweeper(["plan", "study=small", f"workspace={ws}", *SMALL, "--format", "json"], tmp, env).stdout)
    (stage,) = plan["stages"]
    assert (stage["points"], stage["trainings"], stage["naive_iters"], stage["none_iters"]) == (4, 4, 24, 24)
    assert stage["pretrain_iters"] == 0 and stage["naive_pretrain_iters"] == 8  # the cache holds the pre-training now
    assert stage["rate_source"].startswith("srgan: ledgers of 4 trial(s) in the workspace")
    assert stage["unit"] == "CPU core-hours"  # trained on this machine's CPU: core-hours, not device-hours
    budgets = halving.rung_budgets(6, 4, 3)
    assert stage["sha_budgets"] == budgets and stage["sha_iters"] == halving.iterations_spent([4, 1, 1], budgets)
    totals = ledger.Totals()
    for d in (ws / "trials" / "small").glob("*/*"):
        totals.add(ledger.read(d))
    assert stage["none_hours"] * 3600 == pytest.approx(
        totals.device_s - totals.pretrain_device_s, rel=1e-6
    )  # the GAN part, as spent
    naive = ledger.cost_rows(ledger.study_costs(*_stages(ws)))[-1]["naive_device_s"]
    assert stage["naive_hours"] * 3600 == pytest.approx(naive, abs=0.1)
    # an empty workspace: the step time is measured now
    fresh = json.loads(
        sweeper(["plan", "study=small", f"workspace={tmp / 'fresh'}", *SMALL, "--format", "json"], tmp, env).stdout
    )
    assert (
        fresh["stages"][0]["rate_source"].startswith("srgan: measured now on cpu")
        and fresh["stages"][0]["pretrain_iters"] == 2
    )
    assert not (tmp / "fresh").exists()


@pytest.mark.slow
def test_plan_on_a_data_root_plans_the_presets_training_sets_found_there(study, shared_data: Path) -> None:
    """Issue 22: `sweeper plan ... data.root=DATA` settles the sets as `sweeper run` does (smoke: T91 and BSD200
    found there, not the embedded demo's `train`), each counted from its images' headers."""
    tmp, ws, env = study
    done = sweeper(
        ["plan", "study=small", f"workspace={ws}", *SMALL, f"data.root={shared_data}", "--format", "json"], tmp, env
    )
    (stage,) = json.loads(done.stdout)["stages"]
    assert (
        stage["data"].startswith("T91: 1,890 sub-images (the headers of its 91 images")
        and "; BSD200: " in stage["data"]
    )
    assert stage["rate_source"].startswith("srgan: ledgers of 4 trial(s)")  # the workspace's ledgers still price it


def _stages(ws: Path):
    storage = optuna.storages.get_storage(f"sqlite:///{ws / 'optuna.db'}")
    return storage, {"mu": storage.get_study_id_from_name("small.mu")}


@pytest.mark.slow
def test_rank_check_and_report_on_the_real_study(study) -> None:
    tmp, ws, env = study
    out = sweeper(["rank-check", "study=small", f"workspace={ws}"], tmp, env).stdout
    assert "rung budgets [1, 2, 6] snapped to the recorded validation steps [2, 6]" in out
    (check,) = rankcheck.check_study([f"workspace={ws}", "study=small"])
    assert [r.alive for r in check.rungs] == [4, 1] and check.halving_iters == 4 * 2 + 1 * 4 and check.full_iters == 24
    assert check.rungs[-1].kendall == pytest.approx(1.0) and check.rungs[-1].p_kendall == pytest.approx(1 / 24)
    assert check.rungs[-1].winner_alive == (check.pick == check.winner)
    status = json.loads(sweeper(["status", "study=small", f"workspace={ws}", "--format", "json"], tmp, env).stdout)
    final = {t["number"]: t["metrics"]["mean/psnr"] for t in status["trials"]}
    assert check.winner == max(final, key=lambda n: (final[n], -n))  # the replay's final ranking is the stage's own
    report = tmp / "report"
    sweeper(["report", "study=small", f"workspace={ws}", "--out", str(report)], tmp, env)
    for name in ("cost", "rank_check"):
        assert all((report / "tables" / f"{name}{s}").exists() for s in (".md", ".csv", ".tex"))
    assert (report / "figures" / "rank_check.png").stat().st_size > 1000
    assert "### Cost: spent vs the naive protocol" in (report / "README.md").read_text()


@pytest.mark.slow
def test_a_halving_study_logs_and_reports_its_stopped_trials(tmp_path: Path) -> None:
    """Issue 12: a trial stopped by successive halving is an MLflow run tagged with the budget it reached; the
    report's table shows it, so labelled and never marked best; the winner is one that reached the last rung."""
    env = env_for(tmp_path) | {"OMP_NUM_THREADS": "1"}
    write_study(tmp_path, "small", MUS)
    ws = tmp_path / "ws"
    sweeper(["run", "study=small", f"workspace={ws}", *SMALL, "scheduler=sha"], tmp_path, env)
    storage = optuna.storages.get_storage(f"sqlite:///{ws / 'optuna.db'}")
    trials = optuna.load_study(study_name="small.mu", storage=storage).get_trials(deepcopy=False)
    pruned = {t.user_attrs["mlflow_run_id"]: t for t in trials if t.state == TrialState.PRUNED}
    complete = {t.user_attrs["mlflow_run_id"]: t for t in trials if t.state == TrialState.COMPLETE}
    assert len(pruned) >= 2 and len(pruned) + len(complete) == len(MUS)
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    runs = {
        r.info.run_id: r
        for r in client.search_runs(
            [client.get_experiment_by_name("small").experiment_id], "tags.`sweeper.kind` = 'trial'"
        )
    }
    assert set(runs) == set(pruned) | set(complete)  # one run per settled trial, stopped ones included
    for run_id, t in pruned.items():
        run = runs[run_id]
        assert (
            run.data.tags["sweeper.stopped_at"] == str(t.user_attrs["reached_iters"])
            and t.user_attrs["reached_iters"] < 6
        )
        assert run.info.run_name.endswith(f"(stopped at {t.user_attrs['reached_iters']} it)")
        assert run.data.metrics["mean/psnr"] == pytest.approx(t.user_attrs["metrics"]["mean/psnr"])
        assert run.data.tags["sweeper.winner"] == "false"
    assert [r.data.tags["sweeper.winner"] for r in runs.values()].count("true") == 1
    assert all("sweeper.stopped_at" not in runs[i].data.tags for i in complete)

    report = tmp_path / "report"
    sweeper(["report", "study=small", f"workspace={ws}", "--out", str(report)], tmp_path, env)
    (table,) = (report / "tables").glob("table1_*.md")
    rows = [r for r in table.read_text().splitlines() if r.startswith("| mu=")]
    stopped = [r for r in rows if "(stopped at" in r]
    assert len(rows) == len(MUS) and len(stopped) == len(pruned)
    assert not [r for r in stopped if "**" in r or "_" in r.split("|", 2)[2]]  # never marked best or second
    assert "were stopped by successive halving" in table.read_text()
    csv = next((report / "tables").glob("table1_*.csv")).read_text()
    assert csv.count("(stopped at") == len(pruned)
