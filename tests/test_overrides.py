"""CLI tokens -> sweeper options + validated config overrides."""

from __future__ import annotations

import math

import pytest

from sweeper.core.overrides import parse, require_study
from sweeper.core.selection import Rule
from trainer.errors import UserError


def test_options_and_config_keys_are_split() -> None:
    opts = parse(["study=mu_search", "preset=smoke", "executor.n_jobs=2", "select_by=psnr", "rounds=3",
                  "max_retries=0", "train.iters=20", "iters=30", "data.val_sets=[Set5, Set14]", "weights=random"])  # fmt: skip
    assert opts.study == "mu_search" and opts.preset == "smoke"
    assert opts.executor_options == {"n_jobs": 2} and opts.select_by == "psnr"
    assert (opts.rounds, opts.max_retries) == (3, 0)
    # "iters" is an alias of train.iters: given twice under two names, the later wins like in build_config
    assert opts.config == {
        "preset": "smoke",
        "train.iters": 30,
        "data.val_sets": ["Set5", "Set14"],
        "weights": "random",
    }


def test_inf_parses_for_mu() -> None:
    assert math.isinf(parse(["mu=inf"]).config["mu"])


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (["study"], "not a key=value"),
        (["=3"], "not a key=value"),
        (["train.iter=5"], "did you mean train.iters"),
        (["sutdy=mu_search"], "did you mean study"),
        (["select_by=fid"], "choose one of lpips, psnr, ssim"),
        (["rounds=0"], "rounds=0"),
        (["rounds=inf"], "rounds=inf"),
        (["max_retries=-1"], "max_retries=-1"),
        (["study=a", "study=b"], "given twice"),
        (["storage="], "needs a value"),
    ],
)
def test_bad_tokens_name_the_problem(tokens: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse(tokens)


def test_commands_without_training_settings_refuse_them() -> None:
    with pytest.raises(UserError, match="training setting"):
        parse(["study=mu_search", "train.iters=3"], allow_config=False)


def test_study_is_required() -> None:
    with pytest.raises(UserError, match="study=NAME"):
        require_study(parse([]))


def test_scheduler_options() -> None:
    opts = parse(["scheduler=sha", "scheduler.eta=2", "scheduler.min_iters=5"])
    assert (opts.scheduler, opts.eta, opts.min_iters) == ("sha", 2, 5)
    assert (parse([]).scheduler, parse([]).eta, parse([]).min_iters) == ("none", 3, None)
    for tokens, message in ((["scheduler=asha"], "scheduler='asha' is not valid; choose one of none, sha"),
                            (["scheduler.eta=1"], r"scheduler.eta=1: expected a whole number >= 2"),
                            (["scheduler.min_iters=0"], r"scheduler.min_iters=0: expected a whole number >= 1")):  # fmt: skip
        with pytest.raises(UserError, match=message):
            parse(tokens)


def test_stall_s_is_the_orchestrators_for_every_executor() -> None:
    """executor.stall_s (issue 19): seconds >= 0 (0: no watchdog), never handed to the executor; default None
    (the rule of `sweeper.search.watchdog.stall_limit`)."""
    opts = parse(["executor=slurm", "executor.stall_s=90", "executor.partition=gpu"])
    assert (opts.stall_s, opts.executor_options) == (90.0, {"partition": "gpu"})
    assert parse(["executor.stall_s=0"]).stall_s == 0.0 and parse([]).stall_s is None
    for bad in ("-1", "inf", "soon", "true"):
        with pytest.raises(UserError, match=rf"executor.stall_s={bad}: expected seconds >= 0 \(0 turns"):
            parse([f"executor.stall_s={bad}"])


def test_selection_rule_options() -> None:
    """select_by= may list metrics in order; select.* set the margin, the tie-break and the level (issue 18)."""
    opts = parse(["select_by=lpips,psnr", "select.min_effect=0.001", "select.tie_break=simplest", "select.alpha=0.1"])
    assert opts.select_by == "lpips" and opts.rule("lpips") == Rule(("lpips", "psnr"), 0.001, "simplest", 0.1)
    assert parse([]).rule("psnr") == Rule(("psnr",), 0.0, "best_mean", 0.05)
    for token, message in [("select_by=lpips,fid", "select_by='lpips,fid' is not valid"), ("select.tie_break=coin", "best_mean, simplest"),
                           ("select.alpha=0.7", "between 0 and 0.5"), ("select.min_effect=-0.1", "a number >= 0")]:  # fmt: skip
        with pytest.raises(UserError, match=message):
            parse([token])


@pytest.mark.parametrize(
    "command",
    [["status"], ["logs", "trial=0"], ["cancel"], ["report"], ["ui"], ["export", "--out", "w.safetensors"]],
)
@pytest.mark.parametrize("key", ["repeats=3", "executor=slurm", "executor.partition=gpu", "scheduler=sha"])
def test_commands_that_read_what_runs_recorded_refuse_the_keys_that_steer_a_run(
    command: list[str], key: str, tmp_path
) -> None:
    """`sweeper status study=x repeats=3` used to print the study as if the key meant something."""
    from typer.testing import CliRunner

    from sweeper.cli.app import app

    done = CliRunner().invoke(app, [*command, "study=mu_search", f"workspace={tmp_path}", key])
    name = key.split("=")[0]
    assert done.exit_code == 2 and f"{name}= steers how a study runs (give it to `sweeper run`)" in done.output, (
        done.output
    )
    assert "Traceback" not in done.output and not any(tmp_path.iterdir())  # refused before anything was made


@pytest.mark.parametrize(
    "command", [["status"], ["logs", "trial=0"], ["cancel"], ["ui"], ["export", "--out", "w.safetensors"]]
)
@pytest.mark.parametrize(
    "key", ["select_by=psnr", "select.tie_break=simplest", "select.min_effect=0.1", "select.alpha=0.1"]
)
def test_commands_that_show_a_recorded_verdict_refuse_the_keys_that_judge_one(
    command: list[str], key: str, tmp_path
) -> None:
    """`sweeper status study=x select.tie_break=simplest` showed the recorded winner as if the key had chosen it;
    `sweeper run` with the key judges the trained trials again (`sweeper report` takes select_by= for
    checkpoint=best only: tests/test_report.py)."""
    from typer.testing import CliRunner

    from sweeper.cli.app import app

    done = CliRunner().invoke(app, [*command, "study=mu_search", f"workspace={tmp_path}", key])
    name = key.split("=")[0]
    assert done.exit_code == 2 and f"{name}= decides a stage's winner: `sweeper run` with it judges" in done.output, (
        done.output
    )
    assert "Traceback" not in done.output and not any(tmp_path.iterdir())
