"""sweeper.analysis.stats against known answers: synthetic per-image metrics m[point, repeat, image] with and
without a planted difference (rates over many generated datasets), paired vs unpaired intervals on
correlated noise, tied ranks, the lexicographic selection and its tie-breaks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from sweeper.analysis import evidence, stats
from sweeper.core.selection import Rule

LABELS5 = ["a", "b", "c", "d", "e"]


def synthetic(rng: np.random.Generator, points: int, repeats: int, images: int, effect: float = 0.0,
              seed_sd: float = 0.3, point_seed_sd: float = 0.02, point_image_sd: float = 0.01,
              noise_sd: float = 0.02) -> np.ndarray:  # fmt: skip
    """PSNR-like values: image difficulty (sd 1 dB) + a seed effect shared by every point (common random
    numbers) + point x seed and point x image interactions + noise; point 0 is `effect` dB better."""
    image = rng.normal(0, 1, images)[None, None, :]
    seed = rng.normal(0, seed_sd, (1, repeats, 1))
    m = 30 + image + seed + rng.normal(0, point_seed_sd, (points, repeats, 1))
    m = m + rng.normal(0, point_image_sd, (points, 1, images)) + rng.normal(0, noise_sd, (points, repeats, images))
    m[0] += effect
    return m


def winner_rate(points: int, repeats: int, effect: float, n: int, **settings) -> tuple[float, float, float]:
    """Over n generated datasets: how often the verdict is `winner`, how often that winner is point 0, and how
    often any point is declared behind the best."""
    rng = np.random.default_rng(123)
    wins = right = behind = 0
    for k in range(n):
        c = stats.compare(synthetic(rng, points, repeats, 20, effect), True, LABELS5[:points], metric="psnr",
                          settings=stats.Settings(draws=200, seed=k, **settings))  # fmt: skip
        wins += c.kind == "winner"
        right += c.kind == "winner" and c.best.label == "a"
        behind += any(r.separated for r in c.rows)
    return wins / n, right / n, behind / n


def test_no_difference_gives_a_winner_at_about_the_nominal_rate():
    """Two equal points, three seeds: the 95 % interval separates them in about 5 % of datasets (binomial
    sd 1.1 % at n=400; the t interval is slightly conservative)."""
    wins, _, _ = winner_rate(2, 3, 0.0, 400)
    assert 0.01 <= wins <= 0.08


def test_the_pure_bootstrap_over_few_repeats_is_too_narrow():
    """Why the default is not the pure (pigeonhole) bootstrap: at R=3 it declares a winner between equal
    points far above the nominal 5 %."""
    wins, _, _ = winner_rate(2, 3, 0.0, 400, interval="bootstrap")
    assert wins > 0.10


def test_simultaneous_intervals_hold_the_level_where_per_comparison_ones_do_not():
    """Five equal points: simultaneous intervals (all pairs) almost never call a point behind the best;
    per-comparison intervals against a best picked from the same data do, far above 5 %."""
    _, _, together = winner_rate(5, 3, 0.0, 200)
    _, _, alone = winner_rate(5, 3, 0.0, 200, simultaneous=False)
    assert together <= 0.06
    assert alone > 0.10


def test_a_planted_difference_is_found_at_the_expected_rate():
    """The chance of separating point 0 grows with its planted effect: about the nominal rate at 0, most of
    the time at 0.06 dB (about 3.5 standard errors of the difference: power ~0.5 with t on 2 df), always at
    0.15 dB, and the winner found is the planted one."""
    null, _, _ = winner_rate(2, 3, 0.0, 200)
    mid, mid_right, _ = winner_rate(2, 3, 0.06, 200)
    big, big_right, _ = winner_rate(2, 3, 0.15, 200)
    assert null < 0.1 < mid < 0.9 < big
    assert mid_right == mid and big_right == big >= 0.97


def test_paired_intervals_are_much_narrower_than_unpaired_on_correlated_noise():
    """Image difficulty (1 dB) and the shared seed effect (0.3 dB) dwarf a 0.1 dB difference: the paired
    interval removes them (what is left is the point x seed interaction), an unpaired Welch interval on the
    same values cannot."""
    rng = np.random.default_rng(7)
    m = synthetic(rng, 2, 5, 40, effect=0.1)
    c = stats.compare(m, True, ["a", "b"], settings=stats.Settings(simultaneous=False))
    paired = c.rows[1].half_width
    welch = sps.ttest_ind(m[0].ravel(), m[1].ravel(), equal_var=False).confidence_interval(0.95)
    unpaired = (welch.high - welch.low) / 2
    assert paired * 2.5 < unpaired
    assert c.kind == "winner" and c.best.label == "a"
    assert not (welch.low > 0)  # the unpaired interval cannot even tell the sign


def test_identical_points_tie_with_zero_width_and_p_one():
    """Two points with identical per-image values (a reused training): difference 0, p 1, a tie; the
    first point in the caller's order is the best (ties in the ranking keep the grid order)."""
    rng = np.random.default_rng(1)
    m = synthetic(rng, 1, 3, 10)
    c = stats.compare(np.concatenate([m, m]), False, ["x", "y"])
    assert c.kind == "tie" and c.best.label == "x"
    row = c.rows[1]
    assert row.diff == 0 and row.low == 0 and row.high == 0 and row.p == 1 and not row.separated


def test_tied_ranks_in_the_signed_rank_test():
    """Every image 0.5 dB better (all |differences| tied, one seed): the signed-rank statistic is 20 x the mean
    rank 10.5 = 210 and its variance is corrected for the tie, n(n+1)(2n+1)/24 - (20^3 - 20)/48, the
    textbook normal approximation; the interval is a point (no spread)."""
    base = 25 + 0.25 * np.arange(20)[None, None, :]
    m = np.concatenate([base + 0.5, base])
    c = stats.compare(m, True, ["a", "b"])
    z = (210 - 105) / np.sqrt(20 * 21 * 41 / 24 - (20**3 - 20) / 48)
    assert c.rows[1].p == pytest.approx(2 * sps.norm.sf(z), rel=1e-9)
    assert c.test.startswith("Wilcoxon") and c.kind == "winner"
    assert c.rows[1].diff == pytest.approx(0.5) and c.rows[1].low == pytest.approx(0.5)
    assert "over images, one seed" in c.interval


def test_sign_flip_test_is_exact_with_enough_repeats():
    """Six repeats, every repeat's difference positive: the exact two-sided sign-flip p is 2/64."""
    rng = np.random.default_rng(3)
    base = rng.normal(30, 1, (1, 6, 8))
    m = np.concatenate([base + rng.uniform(0.01, 0.02, (1, 6, 1)), base])
    c = stats.compare(m, True, ["a", "b"])
    assert c.test.startswith("sign-flip") and c.rows[1].p == pytest.approx(2 / 64)


def test_sets_weigh_equally_in_the_overall_mean():
    """Set A (2 images) and set B (6 images): the overall mean is the mean of the two set means."""
    m = np.array([[[1.0, 3.0, 10, 10, 10, 10, 10, 10]], [[2.0, 2.0, 9, 9, 9, 9, 9, 9]]])
    groups = ["A", "A", "B", "B", "B", "B", "B", "B"]
    c = stats.compare(m, False, ["p", "q"], groups)
    assert [r.mean for r in c.rows] == [pytest.approx(6.0), pytest.approx(5.5)]
    assert c.best.label == "q" and c.sets == 2


def test_one_value_per_set_and_one_seed_is_untested():
    m = np.array([[[0.12, 0.13]], [[0.11, 0.14]]])
    v = stats.decide([("lpips", m, False)], ["p", "q"], ["Set5", "Set14"])
    assert v.kind == "untested" and v.comparisons[0].rows[0].separated is False
    assert "UNTESTED" in v.summary()
    assert stats.standings(v) == {"p": ("untested", {}), "q": ("untested", {})}  # no interval to show


def test_lexicographic_selection_and_tie_breaks():
    """LPIPS ties a and b (c is clearly worse); PSNR then separates b from a: winner b. Without PSNR the
    tie is broken by best mean (a) or by simplicity (b)."""
    rng = np.random.default_rng(5)
    noise = rng.normal(0, 0.002, (3, 3, 30))
    lpips = 0.12 + noise + np.array([0.0, 0.0, 0.02])[:, None, None]
    lpips[1] += rng.normal(0, 0.004, (3, 30))  # b: noisier, same mean
    lpips[1] -= lpips[1].mean() - lpips[0].mean() - 1e-5
    psnr = 25 + rng.normal(0, 0.01, (3, 3, 30)) + np.array([0.0, 0.2, 0.0])[:, None, None]
    labels = ["a", "b", "c"]
    v = stats.decide([("lpips", lpips, False), ("psnr", psnr, True)], labels)
    assert v.kind == "winner" and v.chosen == "b" and v.comparisons[0].kind == "tie"
    assert "tied by lpips, separated by psnr" in v.summary()
    alone = stats.decide([("lpips", lpips, False)], labels)
    assert alone.kind == "tie" and alone.tied == ["a", "b"] and alone.chosen == "a"
    assert "TIE among a, b" in alone.summary() and "tie_break=best_mean" in alone.summary()
    where = stats.standings(v)  # what each point's MLflow runs show
    assert {k: w for k, (w, _) in where.items()} == {"a": "behind", "b": "best", "c": "behind"}
    assert set(where["c"][1]) == {"point/behind_best/lpips", "point/half_width/lpips"}  # c never reached psnr
    a_psnr = next(r for r in v.comparisons[1].rows if r.label == "a")
    assert (
        where["a"][1]["point/half_width/psnr"] == a_psnr.half_width > 0 and where["b"][1]["point/behind_best/psnr"] == 0
    )
    assert {k: w for k, (w, _) in stats.standings(alone).items()} == {"a": "tied", "b": "tied", "c": "behind"}
    simplest = stats.decide([("lpips", lpips, False)], labels, tie_break="simplest", simplicity=[2, 0, 1])
    assert simplest.chosen == "b"
    with pytest.raises(ValueError, match="tie_break='coin'"):
        stats.decide([("lpips", lpips, False)], labels, tie_break="coin")


def test_min_effect_turns_a_consistent_tiny_difference_into_a_tie():
    """0.005 dB, identical on every image and seed: separated at min_effect 0, tied at 0.01."""
    base = np.random.default_rng(2).normal(30, 1, (1, 3, 10))
    m = np.concatenate([base + 0.005, base])
    assert stats.compare(m, True, ["a", "b"]).kind == "winner"
    assert stats.compare(m, True, ["a", "b"], settings=stats.Settings(min_effect=0.01)).kind == "tie"


def test_resolution_and_repeats_needed_are_estimates_that_shrink_with_repeats():
    """A tie at R=2 names more repeats than it has; with that many seeds from the same model the difference
    is usually resolved; one seed gives no estimate."""
    rng = np.random.default_rng(11)
    c = stats.compare(synthetic(rng, 2, 2, 20, effect=0.04), True, ["a", "b"])
    needed = c.rows[1].repeats_needed
    assert (
        c.kind == "tie"
        and needed is not None
        and needed > 2
        and c.resolvable is not None
        and c.resolvable > c.rows[1].diff
    )
    resolved = sum(
        stats.compare(
            synthetic(rng, 2, needed, 20, effect=0.04), True, ["a", "b"], settings=stats.Settings(draws=400)
        ).kind
        == "winner"
        for _ in range(40)
    )
    assert resolved >= 16  # about half or more (the estimate aims the half-width at the observed difference)
    one = stats.compare(synthetic(rng, 2, 1, 20, effect=0.04), True, ["a", "b"])
    assert one.rows[1].repeats_needed is None


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="shape"):
        stats.compare(np.zeros((2, 3)), True, ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        stats.compare(np.full((2, 1, 3), np.nan), True, ["a", "b"])


def test_holm_adjustment_known_answer():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.01], family=3) == pytest.approx([0.03])


def result(per_image: dict[str, dict[str, float]] | None, final: dict[str, float] | None = None) -> dict:
    """A trial result.json as the trainer writes it: per-image values (RGB PSNR here), or set means only."""
    if per_image is None:
        return {"final": {s: {"psnr": v, "psnr_rgb": v} for s, v in (final or {}).items()}}
    return {"per_image": {s: {name: {"psnr_rgb": v, "psnr_y": v + 1.7, "lpips": None} for name, v in images.items()}
                          for s, images in per_image.items()}}  # fmt: skip


def test_stage_verdict_from_trial_results_pairs_repeats_and_reads_the_space():
    """Three points x two repeats, per-image RGB PSNR: point 'mu=1' is 0.3 dB better on every image and seed
    (paired: the seeds and images differ by far more). The repeat trained by one point only is left out;
    LPIPS (None) cannot decide; set means without per-image values are compared over repeats only."""
    rng = np.random.default_rng(0)
    images = {f"img{i}": float(v) for i, v in enumerate(rng.normal(28, 2, 6))}
    trainings = []
    for r in range(2):
        shift = rng.normal(0, 0.5)
        for point, effect in (("mu=inf", 0.0), ("mu=1", 0.3), ("mu=10", 0.0)):
            noisy = {k: v + shift + effect + rng.normal(0, 0.01) for k, v in images.items()}
            trainings.append(evidence.Trained(point, r, result({"Set5": noisy}), "rgb"))
    trainings.append(evidence.Trained("mu=inf", 2, result({"Set5": images}), "rgb"))  # no partner: not paired
    v = evidence.stage_verdict(trainings, Rule(("psnr",)))
    assert v.kind == "winner" and v.chosen == "mu=1" and v.comparisons[0].repeats == 2 and v.comparisons[0].images == 6
    assert evidence.stage_verdict(trainings, Rule(("lpips",))) is None
    tie = evidence.stage_verdict(
        trainings, Rule(("psnr",), min_effect=1.0), {"mu=inf": (0,), "mu=1": (2,), "mu=10": (1,)}
    )
    assert tie.kind == "tie" and tie.chosen == "mu=1"  # best_mean
    simplest = evidence.stage_verdict(trainings, Rule(("psnr",), min_effect=1.0, tie_break="simplest"),
                                      {"mu=inf": (0,), "mu=1": (2,), "mu=10": (1,)})  # fmt: skip
    assert simplest.chosen == "mu=inf"
    means_only = [evidence.Trained(t.point, t.repeat, result(None, {"Set5": float(np.mean([
        t.result["per_image"]["Set5"][k]["psnr_rgb"] for k in images]))}), "rgb") for t in trainings]  # fmt: skip
    c = evidence.stage_verdict(means_only, Rule(("psnr",))).comparisons[0]
    assert c.images == 1 and c.repeats == 2
    assert evidence.arrange([[t.result] for t in means_only[:3]], "psnr", "rgb").per_image is False
    y = evidence.arrange([[trainings[0].result]], "psnr", "y").m
    assert y[0, 0, 0] == pytest.approx(trainings[0].result["per_image"]["Set5"]["img0"]["psnr_rgb"] + 1.7)
