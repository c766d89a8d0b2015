"""Study files: the built-in ones, validation on load, and user study folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeper.core import studies
from trainer.errors import UserError


def test_builtin_studies_hold_the_papers_grids() -> None:
    mu = studies.load("mu_search")
    assert mu.config == {"arch": "srgan", "beta": "beta1_3"}
    assert [p["mu"] for p in mu.stages[0].points()] == ["0.2", "0.5", "1", "5", "10", "20", "inf"]
    beta = studies.load("beta_search")
    assert beta.inputs == {"mu": "mu_search"} and beta.stages[0].grid == {
        "beta": ("beta1_3", "beta2_4", "beta3_6", "beta4_3")
    }
    paper = studies.load("paper")
    assert paper.alternate and [s.name for s in paper.stages] == ["mu", "beta"]
    ablation = studies.load("ablation").stages[0]
    assert [ablation.overrides(p) for p in ablation.points()] == [
        {"loss.perceptual": v} for v in ("vgg", "static", "dp")
    ]


def test_combos_cross_the_grid() -> None:
    stage = studies.load("correlation").stages[0]
    points = stage.points()
    assert len(points) == 8 and {p["arch"] for p in points} == {"srgan", "esrgan"}
    resolved = [stage.overrides(p) for p in points if p["arch"] == "srgan"]
    assert {"arch": "srgan", "mu": 0.5, "beta": "beta3_6"} in resolved
    assert {"arch": "srgan", "mu": float("inf")} in resolved
    assert stage.searched_keys() == {"arch", "mu", "beta"}


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


GOOD = "description: my study\nstages:\n  - name: s\n    grid:\n      mu: [1, 2]\n"


def test_user_folders_shadow_builtin_and_are_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "studies", "mu_search", GOOD)
    write(tmp_path / "extra", "mine", GOOD.replace("my study", "from the env"))
    monkeypatch.setenv("SWEEPER_STUDIES", str(tmp_path / "extra"))
    assert studies.load("mu_search").description == "my study"
    assert studies.load("mine").stages[0].grid == {"mu": ("1", "2")}
    studies.list_studies()
    out = capsys.readouterr().out
    assert "mine" in out and "from the env" in out and "paper" in out and str(tmp_path / "extra" / "mine.yaml") in out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD + "extra: 1\n", r"unknown key\(s\) \['extra'\]"),
        (GOOD.replace("description: my study\n", ""), "description must be one line"),
        ("description: d\nstages: []\n", "stages must be a non-empty list"),
        (GOOD.replace("mu: [1, 2]", "mu: [1, 0]"), "mu=0"),
        (GOOD.replace("mu: [1, 2]", "mu: [1, 1]"), "distinct values"),
        (GOOD.replace("mu: [1, 2]", "beta: [beta9_9]"), "beta='beta9_9' is not valid"),
        (GOOD.replace("mu:", "muu:"), "unknown config key 'muu'"),
        (GOOD + "config:\n  train.iters: inf\n", "finite integer"),
        ("description: d\nstages:\n  - name: s\n    grids: {}\n", "a stage is a mapping"),
        ("description: [unclosed\n", "cannot read the study file"),
    ],
)
def test_bad_study_files_fail_with_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "bad", text)
    with pytest.raises(UserError, match=message) as err:
        studies.parse_study("bad", path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_unknown_study_lists_the_available_ones() -> None:
    with pytest.raises(UserError, match="unknown study 'nope'; available: .*mu_search"):
        studies.load("nope")
