"""The typed config: presets, overrides, validation errors."""

import math

import pytest

from trainer.config import BETAS, Config, build_config, config_from_dict
from trainer.errors import UserError


def test_paper_defaults_follow_section_4_2():
    cfg = build_config()
    assert (cfg.data.batch_size, cfg.data.hr_patch, cfg.train.iters) == (16, 128, 400_000)
    assert cfg.train.milestones == [50_000, 100_000, 200_000, 300_000]
    assert (cfg.loss.pixel_weight, cfg.loss.adv_weight, cfg.loss.perceptual_weight) == (1e-2, 5e-3, 1.0)
    assert cfg.train.adam_betas == [0.9, 0.99]
    assert cfg.data.subimage_size == 480 and cfg.upscale == 4


def test_preset_then_overrides_and_inf():
    cfg = build_config({"preset": "smoke", "mu": "inf", "train.iters": "30", "data.val_sets": "[Set5, Set14]"})
    assert cfg.preset == "smoke" and math.isinf(cfg.mu)
    assert cfg.train.iters == 30 and cfg.data.val_sets == ["Set5", "Set14"]
    assert cfg.data.hr_patch == 32  # from the smoke preset


def test_round_trip_through_dict_keeps_inf_as_string():
    cfg = build_config({"preset": "proxy", "mu": math.inf, "beta": "beta4_3"})
    d = cfg.to_dict()
    assert d["mu"] == "inf"
    assert config_from_dict(d) == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"trian.iters": 3}, "did you mean train.iters"),
        ({"mu": 0}, "mu must be a positive number"),
        ({"mu": -0.5}, "mu=-0.5: mu must be a positive number"),
        ({"train.threads": -1}, "train.threads=-1"),
        ({"beta": "beta9_9"}, "choose one of " + ", ".join(BETAS)),
        ({"train.iters": "inf"}, "a finite integer is needed"),
        ({"preset": "huge"}, "preset='huge' is not valid"),
        ({"data.hr_patch": 48}, "multiple of 32"),
        ({"train.amp": "maybe"}, "expected true or false"),
    ],
)
def test_bad_values_are_one_line_user_errors(overrides, message):
    with pytest.raises(UserError, match=message) as info:
        build_config(overrides)
    assert "\n" not in str(info.value)


def test_defaults_are_independent_instances():
    a, b = Config(), Config()
    a.data.val_sets.append("X")
    assert b.data.val_sets == ["Set5", "Set14", "BSD100", "Urban100"]
