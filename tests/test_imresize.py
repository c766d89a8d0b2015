"""MATLAB bicubic imresize: against a literal per-pixel transcription of MATLAB's algorithm, and its
invariants. The 119-image MATLAB reference check is in test_evaluate.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.imresize import contributions, degrade, imresize, modcrop


def matlab_imresize_loop(img: np.ndarray, scale: float) -> np.ndarray:
    """imresize(img, scale, 'bicubic') on a uint8 (H, W) array, one output pixel at a time, as written in
    MATLAB's imresize.m: rows first, edge taps clamped, each pass rounded and saturated to uint8."""

    def cubic(x: float) -> float:
        a = abs(x)
        return (1.5 * a**3 - 2.5 * a**2 + 1) if a <= 1 else (-0.5 * a**3 + 2.5 * a**2 - 4 * a + 2) if a <= 2 else 0.0

    def one_pass(src: np.ndarray) -> np.ndarray:  # resizes axis 0
        n_in = src.shape[0]
        n_out = math.ceil(round(n_in * scale, 9))
        width = 4 / scale if scale < 1 else 4
        out = np.zeros((n_out, src.shape[1]))
        for x in range(1, n_out + 1):
            u = x / scale + 0.5 * (1 - 1 / scale)
            left = math.floor(u - width / 2)
            taps = [left + k for k in range(math.ceil(width) + 2)]
            w = [scale * cubic(scale * (u - t)) if scale < 1 else cubic(u - t) for t in taps]
            total = sum(w)
            for t, wt in zip(taps, w):
                out[x - 1] += wt / total * src[min(max(t, 1), n_in) - 1].astype(np.float64)
        return np.clip(np.floor(out + 0.5), 0, 255)

    return one_pass(one_pass(img).T).T.astype(np.uint8)


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 1 / 2, 2, 3, 4])
def test_matches_literal_matlab_transcription(scale: float) -> None:
    g = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, (1, 23, 17), generator=g, dtype=torch.uint8)
    img[..., :, 0] = 0  # a black edge column: border handling matters here (cf. Set14 foreman)
    expected = matlab_imresize_loop(img[0].numpy(), scale)
    assert np.array_equal(imresize(img, scale)[0].numpy(), expected)


def test_uint8_rounds_after_each_pass_float_does_not() -> None:
    g = torch.Generator().manual_seed(2)
    img = torch.randint(0, 256, (3, 40, 36), generator=g, dtype=torch.uint8)
    as_float = imresize(img.double(), 1 / 4)
    as_uint8 = imresize(img, 1 / 4)
    assert as_float.dtype == torch.float64 and as_uint8.dtype == torch.uint8
    single_rounding = as_float.add(0.5).floor().clamp(0, 255)
    assert (single_rounding != as_uint8.double()).any()  # the intermediate rounding changes some pixels
    assert (single_rounding - as_uint8.double()).abs().max() <= 1


def test_weights_and_shapes() -> None:
    idx, w = contributions(480, 120, 0.25)
    assert w.shape == idx.shape and w.shape[0] == 120
    assert torch.allclose(w.sum(1), torch.ones(120, dtype=torch.float64))
    assert idx.min() == 0 and idx.max() == 479
    assert imresize(torch.zeros(3, 243, 81, dtype=torch.uint8), 1 / 3).shape == (3, 81, 27)
    assert degrade(torch.zeros(3, 130, 99, dtype=torch.uint8), 4).shape == (3, 32, 24)
    assert modcrop(torch.zeros(1, 130, 99), 4).shape == (1, 128, 96)


def test_constant_image_stays_constant() -> None:
    img = torch.full((3, 37, 41), 200, dtype=torch.uint8)
    assert torch.equal(imresize(imresize(img, 1 / 4), 4), torch.full((3, 40, 44), 200, dtype=torch.uint8))


def test_batch_equals_single_images_and_float32_stays_float32() -> None:
    g = torch.Generator().manual_seed(3)
    batch = torch.randint(0, 256, (3, 3, 32, 24), generator=g, dtype=torch.uint8)
    out = imresize(batch, 1 / 2)
    for i in range(3):
        assert torch.equal(out[i], imresize(batch[i], 1 / 2))
    assert imresize(batch.float() / 255, 2).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    g = torch.Generator().manual_seed(4)
    img = torch.randint(0, 256, (2, 3, 64, 48), generator=g, dtype=torch.uint8)
    assert torch.equal(imresize(img.cuda(), 1 / 4).cpu(), imresize(img, 1 / 4))
    assert torch.equal(imresize(img.cuda(), 3).cpu(), imresize(img, 3))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="shape"):
        imresize(torch.zeros(8, 8), 2)
    with pytest.raises(ValueError, match="positive"):
        imresize(torch.zeros(1, 8, 8), 0)
