"""The paper's published tables shipped as data (sweeper/analysis/paper_tables.yaml) and the selection rule
applied to them (`sweeper paper-check`)."""

from __future__ import annotations

import pytest

from sweeper.analysis import paper
from trainer.errors import UserError


@pytest.fixture(scope="module")
def published() -> paper.Paper:
    return paper.load()


def test_the_rule_reproduces_the_two_findings(published):
    """By mean LPIPS over the four sets: Table 1 -> mu=0.5 (as the paper), Table 2 -> beta2_4, not the paper's
    beta3_6 (0.12200 vs 0.12248), with three different settings best on the four sets."""
    mu, beta = paper.check(["lpips"], paper=published)
    assert mu.verdict.chosen == "mu=0.5" and mu.agrees
    assert beta.verdict.chosen == "beta2_4" and not beta.agrees
    assert beta.means["beta2_4"] == pytest.approx(0.12200) and beta.means["beta3_6"] == pytest.approx(0.122475)
    assert set(beta.per_set.values()) == {"beta2_4", "beta4_3", "beta3_6"}
    assert mu.verdict.kind == beta.verdict.kind == "untested"
    text = paper.render([mu, beta], published)
    assert "rule picks beta2_4; differs from the paper's beta3_6 (0.12248, 0.00048 behind)" in text
    assert "rule picks mu=0.5; agrees with the paper's mu=0.5" in text
    assert "PSNR/SSIM on RGB" in text


def test_other_rules(published):
    """By PSNR, Table 1 picks mu=1 (the paper: 'when mu is 1, SSIM and PSNR are the best') and Table 2
    beta3_6; LPIPS then PSNR is LPIPS where LPIPS does not tie."""
    mu, beta = paper.check(["psnr"], paper=published)
    assert (mu.verdict.chosen, beta.verdict.chosen) == ("mu=1", "beta3_6")
    assert [c.verdict.chosen for c in paper.check(["lpips", "psnr"], paper=published)] == ["mu=0.5", "beta2_4"]


def test_shipped_numbers_agree_where_the_paper_repeats_them(published):
    """The paper prints some trainings in several tables: a transcription error shows as a mismatch."""
    t = published.tables
    same = [
        (("table1", "mu=0.5"), ("table2", "beta1_3"), None),
        (("table2", "beta3_6"), ("table3", "SRGAN-DP"), None),
        (("table5", "ESRGAN-DP (Ours)"), ("table3", "ESRGAN-DP"), None),
        (("table5", "ESRGAN-DP (Ours)"), ("table6", "VGG loss + ResNet loss + dynamic weighting"), None),
        (("table5", "ESRGAN"), ("table6", "VGG loss"), None),
        (("table1", "mu=inf"), ("table4", "SRGAN-DP mu=inf"), "BSD100"),
        (("table1", "mu=1"), ("table4", "SRGAN-DP mu=1 + beta1_3"), "BSD100"),
        (("table1", "mu=10"), ("table4", "SRGAN-DP mu=10 + beta1_3"), "BSD100"),
        (("table2", "beta3_6"), ("table4", "SRGAN-DP mu=0.5 + beta3_6"), "BSD100"),
        (("table5", "ESRGAN"), ("table4", "ESRGAN-DP mu=inf"), "BSD100"),
        (("table5", "ESRGAN-DP (Ours)"), ("table4", "ESRGAN-DP mu=0.5 + beta3_6"), "BSD100"),
    ]

    def row(key, label):
        return next(r for r in t[key].rows if r.label == label)

    for (ka, la), (kb, lb), only in same:
        a, b = row(ka, la), row(kb, lb)
        for s in [only] if only else b.values:
            for metric, value in b.values[s].items():
                assert a.values[s][metric] == value, (ka, la, kb, lb, s, metric)


def test_rows_match_our_settings(published):
    t = published.tables
    assert t["table1"].match({"arch": "srgan", "mu": "inf", "beta": "beta1_3"}).label == "mu=inf"
    assert t["table2"].match({"arch": "srgan", "mu": "0.50", "beta": "beta2_4", "perceptual": "dp"}).label == "beta2_4"
    assert t["table6"].match({"arch": "esrgan", "perceptual": "static", "mu": "0.5"}).label == "VGG loss + ResNet loss"
    assert t["table1"].match({"arch": "esrgan", "mu": "0.5", "beta": "beta1_3", "perceptual": "dp"}) is None
    assert t["table2"].match({"arch": "srgan", "mu": "0.5", "beta": "beta2_4", "perceptual": "vgg"}) is None
    assert published.space == "rgb" and all(len(r.values) == 4 for r in t["table1"].rows)


def test_paper_check_command(capsys):
    """`sweeper paper-check` applies select_by= as a stage would; a bad metric is a one-line UserError."""
    paper.main([])
    out = capsys.readouterr().out
    assert "rule picks mu=0.5; agrees" in out and "rule picks beta2_4; differs from the paper's beta3_6" in out
    paper.main(["select_by=psnr"])
    assert "rule picks mu=1; differs from the paper's mu=0.5" in capsys.readouterr().out
    with pytest.raises(UserError, match="select_by='psnr,psnr'"):
        paper.main(["select_by=psnr,psnr"])
