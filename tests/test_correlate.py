"""Correlation statistics (exact permutation p-values, scipy's statistics) and the correlate command on a real MLflow store."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import mlflow_layout
import numpy as np
import pytest
from scipy.stats import kendalltau, spearmanr

from sweeper.analysis import correlate
from sweeper.analysis.runs import RunRecord
from trainer.errors import UserError


def brute_force_p(x, y, stat) -> Fraction:
    """One-sided permutation p by plain enumeration with exact fractions (independent of the vectorised code)."""
    obs = stat(x, y)
    perms = list(itertools.permutations(y))
    hits = sum(stat(x, np.array(p)) >= obs - 1e-12 for p in perms)
    return Fraction(hits, len(perms))


def test_perfect_agreement_n4_gives_one_over_24():
    x = np.array([25.37, 25.95, 25.71, 25.82])
    y = np.array([24.95, 25.43, 25.35, 25.40])  # Table 4's BSD100 PSNR: same order
    p_rho, p_tau, exact = correlate.permutation_p(x, y)
    assert exact
    assert p_rho == pytest.approx(1 / 24) and p_tau == pytest.approx(1 / 24)
    assert correlate.spearman(x, y) == pytest.approx(1.0)
    assert correlate.discordant_pairs(x, y) == 0


def test_perfect_disagreement_gives_p_one():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    p_rho, p_tau, _ = correlate.permutation_p(x, -x)
    assert p_rho == pytest.approx(1.0) and p_tau == pytest.approx(1.0)
    assert correlate.discordant_pairs(x, -x) == 6


@pytest.mark.parametrize("seed", range(6))
def test_statistics_match_scipy_and_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 4 + seed % 3
    x = rng.normal(size=n)
    y = np.round(x + rng.normal(size=n), 1 if seed % 2 else 3)  # coarse rounding makes ties
    assert correlate.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert correlate.kendall(x, y) == pytest.approx(kendalltau(x, y).statistic)
    p_rho, p_tau, exact = correlate.permutation_p(x, y)
    assert exact
    assert p_rho == pytest.approx(float(brute_force_p(x, y, lambda a, b: spearmanr(a, b).statistic)))
    assert p_tau == pytest.approx(float(brute_force_p(x, y, lambda a, b: kendalltau(a, b).statistic)))
    signs = [np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in itertools.combinations(range(n), 2)]
    assert correlate.discordant_pairs(x, y) == sum(s < 0 for s in signs)


def test_more_than_eight_settings_uses_a_sample_of_orderings():
    x = np.arange(10.0)
    p_rho, _, exact = correlate.permutation_p(x, x)
    assert not exact
    assert p_rho < 1e-3


def test_weakness_note_for_four_points():
    assert correlate.smallest_p(4) == (pytest.approx(1 / 24), pytest.approx(1 / 12))
    note = correlate.weakness_note(4)
    assert "1/24" in note and "0.0833" in note and "no two-sided test can reach 0.05" in note


def test_best_and_worst_use_lower_is_better_for_lpips():
    labels = ["mu=inf", "mu=1 + beta1_3", "mu=10 + beta1_3", "mu=0.5 + beta3_6"]
    # Table 4 of the paper, BSD100 LPIPS: SRGAN-DP then ESRGAN-DP
    a = correlate.agreement(
        "BSD100",
        "lpips",
        labels,
        np.array([0.1483, 0.1447, 0.1473, 0.1370]),
        np.array([0.1428, 0.1329, 0.1403, 0.1280]),
    )
    assert (a.best_proxy, a.worst_proxy) == ("mu=0.5 + beta3_6", "mu=inf")
    assert a.best_agrees and a.worst_agrees
    assert a.discordant == 0 and a.pairs == 6 and a.kendall == pytest.approx(1.0)
    assert a.p_kendall == pytest.approx(1 / 24)
    psnr = correlate.agreement(
        "BSD100", "psnr", labels, np.array([25.37, 25.95, 25.71, 25.82]), np.array([24.95, 25.43, 25.35, 25.40])
    )
    assert psnr.best_proxy == "mu=1 + beta1_3" and psnr.worst_proxy == "mu=inf" and psnr.best_agrees


def test_gate_and_verdict():
    labels = ["a", "b", "c", "d"]
    rows = [
        correlate.agreement("mean", "lpips", labels, np.array([0.4, 0.3, 0.2, 0.1]), np.array([0.1, 0.2, 0.3, 0.4])),
        correlate.agreement("mean", "psnr", labels, np.array([1.0, 2, 3, 4]), np.array([1.0, 2, 3, 4])),
    ]
    g = correlate.gate(rows, "mean/lpips")
    assert not g.best_agrees
    assert correlate.verdict(g) == ("inconclusive: by mean/lpips the proxy's best is d but the target's best is a, and without "
                                    "per-image values the difference cannot be tested")  # fmt: skip
    assert correlate.gate_tag(g) == "inconclusive"
    assert correlate.gate(rows, "psnr").best_agrees
    with pytest.raises(UserError, match="select_by='BSD100/lpips'.*mean/lpips, mean/psnr"):
        correlate.gate(rows, "BSD100/lpips")
    assert math.isclose(rows[0].p_spearman, 1.0)


def test_constant_or_tied_at_the_top_scores_are_undefined():
    """Issue 9 item 10: NaN statistics once gave p=0.0 and best_agrees=true (ties went to the first setting)."""
    labels = ["a", "b", "c", "d"]
    flat = correlate.agreement("mean", "psnr", labels, np.array([1.0, 2, 3, 4]), np.full(4, 25.0))
    assert flat.undefined == "every target score is 25" and not flat.best_agrees
    assert math.isnan(flat.spearman) and math.isnan(flat.p_spearman) and math.isnan(flat.p_kendall)
    assert correlate.verdict(flat).startswith("undefined: by mean/psnr every target score is 25")
    tied = correlate.agreement("mean", "lpips", labels, np.array([0.1, 0.1, 0.3, 0.4]), np.array([0.1, 0.2, 0.3, 0.4]))
    assert tied.undefined == "2 settings tie for the proxy's best (0.1)" and not tied.best_agrees
    assert tied.p_spearman < 1  # a ranking exists below the top: its statistics stay
    assert correlate.to_rows([tied])[0]["best_agrees"] == "undefined"
    fine = correlate.agreement("mean", "lpips", labels, np.array([0.1, 0.2, 0.2, 0.4]), np.array([0.1, 0.2, 0.3, 0.4]))
    assert fine.undefined is None and fine.best_agrees  # ties below the top do not matter for the gate


SETTINGS = mlflow_layout.SETTINGS
# Table 4 of the paper (BSD100): SRGAN-DP and ESRGAN-DP (PSNR, SSIM, LPIPS) per setting
TABLE4 = {
    "srgan": [(25.37, 0.6919, 0.1483), (25.95, 0.7259, 0.1447), (25.71, 0.7111, 0.1473), (25.82, 0.7202, 0.1370)],
    "esrgan": [(24.95, 0.6785, 0.1428), (25.43, 0.7007, 0.1329), (25.35, 0.6968, 0.1403), (25.40, 0.6993, 0.1280)],
}


@pytest.fixture(scope="module")
def correlation_store(tmp_path_factory):
    """A real MLflow store holding the correlation study as the sweeper logs it."""
    root = tmp_path_factory.mktemp("ws")
    uri, client = mlflow_layout.store(root)
    trials = [
        {"arch": arch, **s, "final": mlflow_layout.scores(*TABLE4[arch][i], sets=("BSD100",))}
        for arch in ("srgan", "esrgan")
        for i, s in enumerate(SETTINGS)
    ]
    mlflow_layout.log_stage(client, root, "correlation", "proxy_vs_target", trials, winner=3, select_by="lpips")
    return uri, client


def test_correlate_command_prints_and_logs_the_check(correlation_store, capsys):
    uri, client = correlation_store
    correlate.main([f"tracking_uri={uri}"])
    out = capsys.readouterr().out
    assert "Verdict (promotion gate, mean/lpips): consistent: both archs rank mu=0.5 + beta3_6 best" in out
    assert "1/24" in out and "no two-sided test can reach 0.05" in out
    exp = client.get_experiment_by_name("correlation")
    (run,) = client.search_runs([exp.experiment_id], "tags.`sweeper.kind` = 'correlation'")
    assert run.data.tags["sweeper.best_agrees"] == "true"
    assert run.data.tags["sweeper.best_setting"] == "mu=0.5 + beta3_6"
    assert run.data.metrics["BSD100/lpips/p_spearman"] == pytest.approx(1 / 24)
    assert run.data.metrics["BSD100/psnr/discordant"] == 0
    rows = client.download_artifacts(run.info.run_id, "correlation.csv")
    lines = Path(rows).read_text().splitlines()
    assert len(lines) == 1 + 2 * 3  # header + (BSD100, mean) x 3 metrics
    assert lines[0].startswith("set,metric,n,spearman,kendall,discordant")


def test_correlate_rejects_bad_input(correlation_store):
    uri, _ = correlation_store
    with pytest.raises(UserError, match="proxy='vgg' is not valid; choose one of srgan, esrgan"):
        correlate.main([f"tracking_uri={uri}", "proxy=vgg"])
    with pytest.raises(UserError, match="proxy=esrgan and target=esrgan are the same"):
        correlate.main([f"tracking_uri={uri}", "proxy=esrgan"])
    with pytest.raises(UserError, match=r"no runs of study mu_search .*`sweeper run study=mu_search` trains"):
        correlate.main([f"tracking_uri={uri}", "study=mu_search"])
    with pytest.raises(UserError, match="no tracking store at"):
        correlate.main([f"workspace={uri.removeprefix('sqlite:///')}.missing"])


def test_too_few_shared_settings_is_a_user_error(tmp_path):
    uri, client = mlflow_layout.store(tmp_path)
    trials = [{"arch": "srgan", **s, "final": mlflow_layout.scores(25, 0.7, 0.14)} for s in SETTINGS]
    trials.append({"arch": "esrgan", **SETTINGS[0], "final": mlflow_layout.scores(25, 0.7, 0.14)})
    mlflow_layout.log_stage(client, tmp_path, "correlation", "proxy_vs_target", trials)
    with pytest.raises(UserError, match="at least 3 settings.*shared finished settings: mu=inf"):
        correlate.main([f"tracking_uri={uri}"])


def results_of(results: dict) -> Callable[[RunRecord], dict]:
    return lambda r: results[r.run_id]


def test_a_disagreement_is_a_contradiction_only_when_both_archs_separate_it():
    """Per-image values: the proxy prefers d, the target a, each by 0.02 LPIPS on every image (far beyond the
    noise): significant, "contradicts". The same bests by 0.0005 amid 0.01 noise: "inconclusive". rho and tau
    get bootstrap intervals over images."""
    labels = ["a", "b", "c", "d"]
    rng = np.random.default_rng(0)
    base = rng.uniform(0.1, 0.2, 12)

    def runs(arch: str, offsets: list[float], noise: float) -> list:
        out = []
        for label, off in zip(labels, offsets):
            images = {f"i{k}": {"lpips": float(b + off + rng.normal(0, noise))} for k, b in enumerate(base)}
            mean = float(np.mean([v["lpips"] for v in images.values()]))
            out.append((RunRecord(f"{arch}-{label}", label, "x", "FINISHED", 0, 0, {}, {"arch": arch, "metrics.space": "rgb"},
                                  {"Set5/lpips": mean, "mean/lpips": mean}), {"per_image": {"Set5": images}, "final": {"Set5": {"lpips": mean}}}))  # fmt: skip
        return out

    for gap, noise, expected in ((0.02, 0.001, "significant"), (0.0005, 0.01, "not significant")):
        proxy = runs("srgan", [0.03, 0.02, 0.01, 0.01 - gap], noise)
        target = runs("esrgan", [0.0, 0.01, 0.02, gap], noise)
        results = {r.run_id: res for r, res in proxy + target}
        pairs = [(label, p, t) for label, (p, _), (t, _) in zip(labels, proxy, target)]
        a = correlate.agreement("Set5", "lpips", labels, np.array([p.value("Set5", "lpips") for _, p, _ in pairs]),
                                np.array([t.value("Set5", "lpips") for _, _, t in pairs]))  # fmt: skip
        got = correlate.tested(a, pairs, results_of(results))
        assert (got.best_proxy, got.best_target, got.disagreement) == ("d", "a", expected)
        assert correlate.verdict(got).startswith("contradicts" if expected == "significant" else "inconclusive")
        assert got.rho_ci is not None and got.tau_ci is not None
        assert got.rho_ci[0] <= got.spearman <= got.rho_ci[1] and got.tau_ci[0] <= got.kendall <= got.tau_ci[1]
