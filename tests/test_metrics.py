"""PSNR/SSIM on Y (MATLAB conventions) or RGB (BasicSR) and LPIPS availability/loading."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from scipy.signal import correlate2d

from trainer import weight_files
from trainer.data import ValImage
from trainer.metrics import (
    LPIPSMetric,
    per_image_csv,
    psnr_batch,
    psnr_y,
    psnr_y_batch,
    rgb_to_y,
    score,
    ssim_batch,
    ssim_y,
    ssim_y_batch,
)
from trainer.scores import set_means
from trainer.train import score_image


def rand_u8(*shape: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_rgb_to_y_matches_matlab_rgb2ycbcr() -> None:
    pixels = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30], [120, 132, 124]]
    y = rgb_to_y(torch.tensor(pixels, dtype=torch.uint8).T.reshape(3, 1, -1))[0]
    # MATLAB: rgb2ycbcr(uint8(...)) -> Y = round(16 + (65.481 R + 128.553 G + 24.966 B) / 255); the last colour
    # is 125.5 in real arithmetic but 125.49999999999999 in MATLAB's double evaluation order.
    assert y.tolist() == [16, 235, 81, 145, 41, 32, 125]
    gray = rand_u8(1, 5, 7, seed=0)
    assert torch.equal(rgb_to_y(gray), gray[0].double())  # a grayscale image is its own Y


def test_psnr_known_value_border_and_identity() -> None:
    hr = torch.full((1, 20, 20), 100, dtype=torch.uint8)
    sr = hr.clone()
    sr[:, 4:-4, 4:-4] = 110
    assert psnr_y(sr, hr, crop_border=4) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-12)
    sr[:, :4] = 0  # only the cropped border changes
    assert psnr_y(sr, hr, crop_border=4) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-12)
    assert psnr_y(hr, hr, 4) == math.inf


def ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al.'s ssim_index.m: fspecial('gaussian', 11, 1.5), filter2(..., 'valid')."""
    r = np.arange(-5, 6)
    win = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    win /= win.sum()
    f = lambda a: correlate2d(a, win, mode="valid")  # noqa: E731
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    return float((((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))).mean())


def test_ssim_matches_wang_reference_and_batch_matches_single() -> None:
    hr = rand_u8(4, 3, 40, 32, seed=1)
    sr = (hr.int() + rand_u8(4, 3, 40, 32, seed=2).int() // 8 - 16).clamp(0, 255).to(torch.uint8)
    batch_ssim, batch_psnr = ssim_y_batch(sr, hr, 4), psnr_y_batch(sr, hr, 4)
    for i in range(4):
        x, y = (rgb_to_y(t[i])[4:-4, 4:-4].numpy() for t in (sr, hr))
        assert ssim_y(sr[i], hr[i], 4) == pytest.approx(ssim_reference(x, y), abs=1e-12)
        assert float(batch_ssim[i]) == ssim_y(sr[i], hr[i], 4)
        assert float(batch_psnr[i]) == psnr_y(sr[i], hr[i], 4)
    assert ssim_y(hr[0], hr[0], 4) == pytest.approx(1.0, abs=1e-12)
    assert 0 < float(batch_ssim.max()) < 1


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        psnr_y(rand_u8(3, 8, 8, seed=0), rand_u8(3, 8, 9, seed=0), 0)


def test_lpips_unavailable_without_alexnet_weights(torch_home: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        metric = LPIPSMetric("cpu")
    assert not metric.available
    assert "alexnet-owt-7be5be79.pth" in metric.reason and "sweeper weights import" in metric.reason
    assert [r.getMessage() for r in caplog.records] == [metric.reason]  # one warning, the reason
    with caplog.at_level(logging.WARNING):
        assert not LPIPSMetric("cpu").available
    assert len(caplog.records) == 1  # once per process, however many metrics a command builds
    with pytest.raises(RuntimeError, match="LPIPS unavailable"):
        metric(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16))


def cache_trunk(torch_home: Path, key: str, features: torch.nn.Sequential) -> None:
    """Write `features` into the hub cache under the torchvision file name of FILES[key]."""
    (torch_home / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(
        {f"features.{k}": v for k, v in features.state_dict().items()},
        torch_home / "hub" / "checkpoints" / weight_files.FILES[key].name,
    )


def test_lpips_uses_the_cached_alexnet_weights(torch_home: Path) -> None:
    torch.manual_seed(0)
    features = torchvision.models.alexnet().features
    cache_trunk(torch_home, "alexnet", features)
    metric = LPIPSMetric("cpu")
    assert metric.available and metric.describe() == {"net": "alex", "version": "0.1", "weights": "imagenet"}
    trunk = dict(metric.model.net.named_parameters())
    assert torch.equal(trunk["slice1.0.weight"], features[0].weight)
    assert torch.equal(trunk["slice5.10.bias"], features[10].bias)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    same, different = metric(x, x), metric(x, x.flip(-1))
    assert same.shape == (2,) and torch.allclose(same, torch.zeros(2), atol=1e-6)
    assert (different > 0.01).all()
    older = LPIPSMetric("cpu", version="0.0")  # the v0.0 heads, and no input scaling layer
    assert older.available and float(older(x, x.flip(-1))[0]) != pytest.approx(float(different[0]), rel=1e-3)


def test_lpips_vgg_uses_the_cached_vgg16_weights(torch_home: Path) -> None:
    assert not LPIPSMetric("cpu", net="vgg").available  # alex present or not, vgg needs its own file
    torch.manual_seed(0)
    features = torchvision.models.vgg16().features
    cache_trunk(torch_home, "vgg16", features)
    metric = LPIPSMetric("cpu", net="vgg")
    assert metric.available and metric.model.net.N_slices == 5
    trunk = dict(metric.model.net.named_parameters())
    assert torch.equal(trunk["slice1.0.weight"], features[0].weight)
    assert torch.equal(trunk["slice5.28.bias"], features[28].bias)  # conv5_3, the trunk's last layer
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert float(metric(x, x)[0]) == pytest.approx(0, abs=1e-6) and float(metric(x, x.flip(-1))[0]) > 0.01


# --------------------------------------------------------------------------- metrics.space=rgb (BasicSR, test_y_channel false)


def test_rgb_psnr_is_one_mse_over_all_channels() -> None:
    hr = torch.full((3, 20, 20), 100, dtype=torch.uint8)
    sr = hr.clone()
    sr[0, 4:-4, 4:-4] = 110  # one channel off by 10 inside the border: MSE = 100 / 3
    assert float(psnr_batch(sr, hr, 4, "rgb")) == pytest.approx(10 * math.log10(255**2 * 3 / 100), abs=1e-12)
    assert float(psnr_batch(sr, hr, 4, "y")) == psnr_y(sr, hr, 4) != float(psnr_batch(sr, hr, 4, "rgb"))


def test_rgb_ssim_is_the_mean_of_the_channels_ssim() -> None:
    hr = rand_u8(3, 40, 32, seed=3)
    sr = (hr.int() + rand_u8(3, 40, 32, seed=4).int() // 8 - 16).clamp(0, 255).to(torch.uint8)
    per_channel = [
        ssim_reference(sr[c, 4:-4, 4:-4].double().numpy(), hr[c, 4:-4, 4:-4].double().numpy()) for c in range(3)
    ]
    assert float(ssim_batch(sr, hr, 4, "rgb")) == pytest.approx(sum(per_channel) / 3, abs=1e-12)
    with pytest.raises(ValueError, match="'ycbcr'"):
        ssim_batch(sr, hr, 4, "ycbcr")


def test_score_gives_both_spaces_as_the_single_space_functions() -> None:
    hr = rand_u8(3, 40, 32, seed=6)
    sr_u8 = (hr.int() + rand_u8(3, 40, 32, seed=7).int() // 8 - 16).clamp(0, 255).to(torch.uint8)
    both = score(sr_u8.float() / 255, hr, 4)
    assert both == {
        "psnr_y": psnr_y(sr_u8, hr, 4),
        "ssim_y": ssim_y(sr_u8, hr, 4),
        "psnr_rgb": float(psnr_batch(sr_u8, hr, 4, "rgb")),
        "ssim_rgb": float(ssim_batch(sr_u8, hr, 4, "rgb")),
    }
    assert both["psnr_y"] != both["psnr_rgb"]


def test_set_means_and_per_image_csv() -> None:
    rows: dict[str, dict[str, float | None]] = {
        "a.png": {"psnr_y": 30.0, "ssim_y": 0.9, "psnr_rgb": 28.0, "ssim_rgb": 0.8, "lpips": 0.2},
        "b.png": {"psnr_y": 32.0, "ssim_y": 0.7, "psnr_rgb": 29.0, "ssim_rgb": 0.6, "lpips": None},
    }
    means = set_means(rows.values(), "y")
    assert means == {
        "psnr": 31.0,
        "ssim": pytest.approx(0.8),
        "lpips": None,
        "psnr_y": 31.0,
        "ssim_y": pytest.approx(0.8),
        "psnr_rgb": 28.5,
        "ssim_rgb": pytest.approx(0.7),
    }  # LPIPS only where every image has one
    assert set_means([rows["a.png"]], "rgb")["psnr"] == 28.0 and set_means([rows["a.png"]], "rgb")["lpips"] == 0.2
    text = per_image_csv({"Set5": rows})
    assert text.splitlines() == [
        "set,image,psnr_y,ssim_y,psnr_rgb,ssim_rgb,lpips",
        "Set5,a.png,30.0,0.9,28.0,0.8,0.2",
        "Set5,b.png,32.0,0.7,29.0,0.6,",
    ]


def test_validation_scores_a_grayscale_image_in_either_space() -> None:
    gray = rand_u8(1, 24, 24, seed=5)
    img = ValImage("g.png", gray, gray)
    sr = gray.repeat(3, 1, 1).float().div(255).unsqueeze(0)  # a perfect grayscale SR
    assert score_image(sr, img, 4, "y") == (math.inf, pytest.approx(1.0))
    assert score_image(sr, img, 4, "rgb") == (math.inf, pytest.approx(1.0))  # HR read as three equal channels
    sr[0, 0, 8:16, 8:16] += 0.1  # red only: on Y the channels are averaged first, on RGB each is scored
    psnr_y_value, psnr_rgb_value = score_image(sr, img, 4, "y")[0], score_image(sr, img, 4, "rgb")[0]
    assert math.isfinite(psnr_y_value) and math.isfinite(psnr_rgb_value) and psnr_y_value != psnr_rgb_value
