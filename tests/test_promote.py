"""`sweeper promote` against a real MLflow store: the winner it reads, its refusals and their reasons, the dry run."""

from __future__ import annotations

import shutil

import mlflow_layout
import pytest
from mlflow import MlflowClient

from sweeper.analysis import correlate, report
from sweeper.search import promote
from trainer.errors import UserError

BETAS = ["beta1_3", "beta2_4", "beta3_6", "beta4_3"]
SETTINGS = mlflow_layout.SETTINGS


def paper_study(client, root, finished: bool = True) -> None:
    """The paper study: mu stage won by mu=0.5, beta stage won by beta3_6 (or still running)."""
    mu = [
        {
            "arch": "srgan",
            "mu": m,
            "final": mlflow_layout.scores(25, 0.7, 0.15 + 0.01 * abs(m - 0.5) if m != float("inf") else 0.3),
        }
        for m in (0.5, 1, float("inf"))
    ]
    mlflow_layout.log_stage(client, root, "paper", "mu", mu, winner=0)
    beta = [
        {"arch": "srgan", "mu": 0.5, "beta": b, "final": mlflow_layout.scores(25, 0.7, 0.2 - 0.01 * k)}
        for k, b in enumerate(BETAS[:3])
    ]
    mlflow_layout.log_stage(client, root, "paper", "beta", beta, winner=2 if finished else None)


def correlation_study(client, root, uri, target_lpips: list[float]) -> None:
    """The correlation study and its `sweeper correlate` run; the proxy ranks mu=0.5 + beta3_6 best by LPIPS."""
    proxy_lpips = [0.30, 0.20, 0.25, 0.10]
    trials = [
        {"arch": arch, **s, "final": mlflow_layout.scores(25, 0.7, lp[i])}
        for arch, lp in (("srgan", proxy_lpips), ("esrgan", target_lpips))
        for i, s in enumerate(SETTINGS)
    ]
    mlflow_layout.log_stage(client, root, "correlation", "proxy_vs_target", trials, winner=3)
    correlate.main([f"tracking_uri={uri}"])


@pytest.fixture(scope="module")
def finished_paper(tmp_path_factory):
    """A workspace holding the finished paper study, built once and copied by `ws`."""
    root = tmp_path_factory.mktemp("paper")
    _, client = mlflow_layout.store(root)
    paper_study(client, root)
    return root


@pytest.fixture
def ws(finished_paper, tmp_path):
    """A copy of the finished-paper workspace (its stored artifacts stay readable where they were written)."""
    root = tmp_path / "ws"
    shutil.copytree(finished_paper, root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return uri, MlflowClient(tracking_uri=uri), root


def test_refuses_an_incomplete_search(tmp_path):
    uri, client = mlflow_layout.store(tmp_path)
    paper_study(client, tmp_path, finished=False)
    with pytest.raises(
        UserError,
        match="no completed search.*the search paper is incomplete: stage beta has no winner yet.*study beta_search has no runs",
    ):
        promote.main("esrgan", None, force=True, dry_run=True, overrides=[f"tracking_uri={uri}"])
    with pytest.raises(
        UserError,
        match="^the search paper is incomplete: stage beta has no winner yet; finish it with `sweeper run study=paper`$",
    ):
        promote.main("esrgan", "paper", force=True, dry_run=True, overrides=[f"tracking_uri={uri}"])


def test_refuses_without_a_correlation_check_unless_forced(ws, capsys):
    uri, client, root = ws
    with pytest.raises(
        UserError,
        match="no correlation check of srgan against esrgan: run `sweeper run study=correlation` and `sweeper correlate`; or pass --force",
    ):
        promote.main("esrgan", None, force=False, dry_run=False, overrides=[f"tracking_uri={uri}"])
    promote.main("esrgan", None, force=False, dry_run=True, overrides=[f"tracking_uri={uri}"])  # previews all the same
    out = capsys.readouterr().out
    assert (
        "gate: would be refused: no correlation check of srgan against esrgan: run `sweeper run study=correlation`"
        in out
    )
    assert "command: sweeper train arch=esrgan mu=0.5 beta=beta3_6 preset=paper" in out


def test_a_demo_winner_goes_into_preset_paper_only_when_asked(ws, capsys):
    """The stores here hold a preset=smoke, weights=random search: a plumbing check, not a paper result."""
    uri, client, root = ws
    correlation_study(client, root, uri, target_lpips=[0.30, 0.20, 0.25, 0.10])  # agrees: the correlation gate passes
    capsys.readouterr()
    promote.main("esrgan", None, force=False, dry_run=True, overrides=[f"tracking_uri={uri}"])
    out = capsys.readouterr().out
    assert (
        "(stage beta, run " in out
        and "preset=smoke, weights=random, by mean lpips): mu=0.5, beta=beta3_6 -> arch=esrgan, preset=paper" in out
    )
    assert "gate: passes: the correlation check (MLflow run " in out
    assert (
        "gate: would be refused: that winner was picked in a plumbing check (preset=smoke, weights=random, by mean lpips)"
        in out
    )
    with pytest.raises(UserError, match=r"plumbing check .*; pass --allow-demo to promote it into preset=paper anyway"):
        promote.main("esrgan", None, force=True, dry_run=False, overrides=[f"tracking_uri={uri}"])


def test_refuses_when_the_check_contradicts_the_proxy(ws, capsys):
    uri, client, root = ws
    correlation_study(client, root, uri, target_lpips=[0.30, 0.05, 0.25, 0.10])  # target prefers mu=1 + beta1_3
    with pytest.raises(
        UserError,
        match="does not support the proxy: inconclusive: by mean/lpips the proxy's best is mu=0.5 \\+ beta3_6 but the target's best is mu=1 \\+ beta1_3, and without per-image values the difference cannot be tested.*or pass --force",
    ):
        promote.main("esrgan", None, force=False, dry_run=False, overrides=[f"tracking_uri={uri}"])


def test_refuses_a_degenerate_check_unless_forced(ws, capsys):
    """Issue 9 item 10: a target whose LPIPS ties at the top ranks nothing: "undefined", refused without --force."""
    uri, client, root = ws
    correlation_study(client, root, uri, target_lpips=[0.30, 0.10, 0.25, 0.10])
    assert "undefined: by mean/lpips 2 settings tie for the target's best" in capsys.readouterr().out
    with pytest.raises(
        UserError, match="does not support the proxy: undefined: .*tie for the target's best.*; or pass --force"
    ):
        promote.main("esrgan", None, force=False, dry_run=False, overrides=[f"tracking_uri={uri}"])
    promote.main("esrgan", None, force=True, dry_run=True, overrides=[f"tracking_uri={uri}"])
    assert "gate: would be refused: the correlation check" in capsys.readouterr().out


def test_dry_run_prints_the_resolved_config_and_command(ws, capsys):
    uri, client, root = ws
    correlation_study(client, root, uri, target_lpips=[0.30, 0.20, 0.25, 0.10])
    capsys.readouterr()
    promote.main("esrgan", None, force=False, dry_run=True, overrides=[f"tracking_uri={uri}", "train.iters=1000"])
    out = capsys.readouterr().out
    assert "arch: esrgan\n" in out and "mu: 0.5\n" in out and "beta: beta3_6\n" in out and "preset: paper\n" in out
    assert "  iters: 1000\n" in out
    assert (
        f"command: sweeper train arch=esrgan mu=0.5 beta=beta3_6 preset=paper tracking_uri={uri} train.iters=1000\n"
        in out
    )
    winner = [
        r
        for r in client.search_runs(
            [client.get_experiment_by_name("paper").experiment_id], "tags.`sweeper.winner` = 'true'"
        )
        if r.data.tags["sweeper.stage"] == "beta"
    ][0]
    assert f"sweeper.promoted_from_run_id={winner.info.run_id}" in out
    assert "sweeper.promoted_from_study=paper" in out and "sweeper.promoted_from_stage=beta" in out


def test_rejects_bad_input(ws):
    uri, client, root = ws
    with pytest.raises(UserError, match="--to 'edsr' is not valid; choose one of srgan, esrgan"):
        promote.main("edsr", None, force=True, dry_run=True, overrides=[f"tracking_uri={uri}"])
    with pytest.raises(UserError, match="mu= is decided by the search"):
        promote.main("esrgan", None, force=True, dry_run=True, overrides=[f"tracking_uri={uri}", "mu=2"])
    with pytest.raises(UserError, match="the search paper already ran on arch=srgan"):
        promote.main("srgan", None, force=True, dry_run=True, overrides=[f"tracking_uri={uri}"])
    with pytest.raises(UserError, match="study=.nope. has no runs in the tracking store; studies with runs: paper"):
        promote.main("esrgan", "nope", force=True, dry_run=True, overrides=[f"tracking_uri={uri}"])
    with pytest.raises(UserError, match="study=.nope. has no runs in the tracking store; studies with runs: paper"):
        promote.main("esrgan", None, force=True, dry_run=True, overrides=[f"tracking_uri={uri}", "study=nope"])
    with pytest.raises(UserError, match="study=paper and --from nope name two studies; give one of them"):
        promote.main("esrgan", "nope", force=True, dry_run=True, overrides=[f"tracking_uri={uri}", "study=paper"])


def test_study_names_the_search_like_from(ws, capsys):
    uri, client, root = ws
    correlation_study(client, root, uri, target_lpips=[0.30, 0.20, 0.25, 0.10])
    for named in (["study=paper"], []):  # the named search, and the one found without a name: the same command
        capsys.readouterr()
        promote.main("esrgan", None, force=False, dry_run=True, overrides=[f"tracking_uri={uri}", *named])
        out = capsys.readouterr().out
        assert "promoting the winner of paper (stage beta" in out
        assert f"command: sweeper train arch=esrgan mu=0.5 beta=beta3_6 preset=paper tracking_uri={uri}\n" in out


@pytest.mark.slow
def test_promotion_trains_the_target_and_links_it_to_its_source(ws):
    uri, client, root = ws
    correlation_study(client, root, uri, target_lpips=[0.30, 0.20, 0.25, 0.10])
    tiny = [
        "preset=smoke",
        "weights=random",
        "model.num_feat=8",
        "model.num_blocks=1",
        "model.growth=8",
        "train.iters=2",
        "train.pretrain_iters=2",
        "train.val_every=2",
        "train.milestones=[1]",
        "train.pretrain_milestones=[1]",
    ]
    promote.main("esrgan", None, force=False, dry_run=False, overrides=[f"workspace={root}", *tiny])
    (run,) = client.search_runs(
        [client.get_experiment_by_name("train").experiment_id], "tags.`sweeper.promoted_from_study` = 'paper'"
    )
    source = client.get_run(run.data.tags["sweeper.promoted_from_run_id"])
    assert source.data.tags["sweeper.winner"] == "true" and source.data.tags["sweeper.stage"] == "beta"
    assert (run.data.params["arch"], run.data.params["mu"], run.data.params["beta"]) == ("esrgan", "0.5", "beta3_6")
    assert run.data.tags["sweeper.promoted_forced"] == "false"
    check = client.get_run(run.data.tags["sweeper.correlation_run_id"])
    assert check.data.tags["sweeper.kind"] == "correlation"
    # the paper study's report now pairs the winner with its promoted run (Tables 3 and 5)
    report.build(client, "paper", root / "report")
    table3 = (root / "report" / "tables" / "table3.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in table3[1:]] == [
        "SRGAN-DP (mu=0.5 + beta3_6)",
        "ESRGAN-DP (mu=0.5 + beta3_6)",
    ]
    assert "ESRGAN-DP (mu=0.5 + beta3_6, ours)" in (root / "report" / "tables" / "table5.md").read_text()
