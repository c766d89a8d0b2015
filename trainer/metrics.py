"""PSNR and SSIM on the Y channel with MATLAB's conventions (section 4.1: 4-pixel border removed, Y of
YCbCr) and on RGB as BasicSR scores with `test_y_channel: false` (the authors' configs, and the space of the
paper's published numbers), and LPIPS (Zhang et al.; AlexNet or VGG16 trunk, v0.1 or v0.0 heads) through the
`lpips` package. `score` gives both spaces of one SR image; `metrics.space` only says which one selects.

Conventions, as in ESRGAN's and most SR papers' MATLAB evaluation:
- Y is MATLAB's `rgb2ycbcr` on uint8 (ITU-R BT.601, studio range 16..235), rounded to uint8; a
  1-channel image is used as Y directly.
- PSNR and SSIM are computed in float64 on Y in [0, 255] after cropping `crop_border` pixels per side.
- SSIM is Wang et al.'s: 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, 'valid' filtering,
  mean of the SSIM map.
- space "rgb" (`metrics.space=rgb`): the same border crop, PSNR from the MSE over all three channels,
  SSIM the mean of the three channels' SSIM, as BasicSR's `calculate_psnr` / `calculate_ssim`.

Every function takes uint8 tensors, (C, H, W) for one image or (N, C, H, W) for a batch of same-size
images (the `_batch` forms, which take the space, "y" or "rgb"; return one value per image: fewer kernel launches on a GPU; on a CPU, one image
at a time is as fast, as the batch no longer fits in the caches).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import functools
import io
import logging
import warnings
from pathlib import Path

import torch

from trainer import weight_files, weights
from trainer.config import METRIC_SPACES as SPACES
from trainer.images import to_rgb, to_uint8
from trainer.scores import SCORES

# MATLAB's rgb2ycbcr for uint8: T = [65.481 128.553 24.966] * (1/255), Y = imlincomb(T1, R, T2, G, T3, B, 16).
Y_WEIGHTS = tuple(c * (1 / 255) for c in (65.481, 128.553, 24.966))


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3 | 1, H, W) -> float64 (..., H, W) holding MATLAB's rounded uint8 Y values.

    Evaluated in MATLAB's order (T1 R + T2 G + T3 B + 16 in double, separate operations) because some
    colours land on .5 exactly in real arithmetic: (120, 132, 124) gives 125.49999999999999, so Y = 125,
    where a BLAS dot product may give 125.5 and round to 126.
    """
    if img.dtype != torch.uint8:
        raise TypeError(f"rgb_to_y expects a uint8 image, got {img.dtype}")
    if img.shape[-3] == 1:
        return img[..., 0, :, :].double()
    r, g, b = img.double().unbind(-3)
    y = r * Y_WEIGHTS[0] + g * Y_WEIGHTS[1] + b * Y_WEIGHTS[2] + 16.0
    return torch.floor(y + 0.5)  # values are positive: MATLAB's round-half-away


def _planes(sr: torch.Tensor, hr: torch.Tensor, crop_border: int, space: str) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 planes to score, border cropped: (..., H, W) of Y for "y", (..., C, H, W) for "rgb"."""
    if sr.shape != hr.shape:
        raise ValueError(f"SR and HR shapes differ: {tuple(sr.shape)} vs {tuple(hr.shape)}")
    if space not in SPACES:
        raise ValueError(f"metric space {space!r}: choose one of {', '.join(SPACES)}")
    c = crop_border
    a, b = (rgb_to_y(sr), rgb_to_y(hr)) if space == "y" else (sr.double(), hr.double())
    if c:
        a, b = a[..., c:-c, c:-c], b[..., c:-c, c:-c]
    return a, b


def psnr_batch(sr: torch.Tensor, hr: torch.Tensor, crop_border: int, space: str = "y") -> torch.Tensor:
    """PSNR (dB) of each image pair on Y or RGB (all channels in one MSE); inf for identical images."""
    a, b = _planes(sr, hr, crop_border, space)
    dims = (-2, -1) if space == "y" else (-3, -2, -1)
    mse = (a - b).pow(2).mean(dim=dims)
    return 10.0 * torch.log10(255.0**2 / mse)


def _gaussian_filter_valid(x: torch.Tensor, window: list[float]) -> torch.Tensor:
    """Separable 'valid' correlation of (..., H, W) with the outer product of the 1-D `window`."""
    k = len(window)
    h, w = x.shape[-2:]
    rows = x[..., : h - k + 1, :] * window[0]
    for i in range(1, k):
        rows.add_(x[..., i : h - k + 1 + i, :], alpha=window[i])
    out = rows[..., : w - k + 1] * window[0]
    for i in range(1, k):
        out.add_(rows[..., i : w - k + 1 + i], alpha=window[i])
    return out


def ssim_batch(sr: torch.Tensor, hr: torch.Tensor, crop_border: int, space: str = "y") -> torch.Tensor:
    """SSIM (Wang et al. 2004, eq. 13 there) of each image pair, as MATLAB's `ssim_index`: on Y, or the
    mean over the RGB channels."""
    x, y = _planes(sr, hr, crop_border, space)
    bell = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    g = (bell / bell.sum()).tolist()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    # The five local statistics in one stack, filtered together.
    mu_x, mu_y, xx, yy, xy = _gaussian_filter_valid(torch.stack([x, y, x * x, y * y, x * y]), g)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    ssim = ssim_map.mean(dim=(-2, -1))
    return ssim if space == "y" else ssim.mean(dim=-1)


def psnr_y_batch(sr: torch.Tensor, hr: torch.Tensor, crop_border: int) -> torch.Tensor:
    """PSNR (dB) on Y of each image pair."""
    return psnr_batch(sr, hr, crop_border, "y")


def ssim_y_batch(sr: torch.Tensor, hr: torch.Tensor, crop_border: int) -> torch.Tensor:
    """SSIM on Y of each image pair."""
    return ssim_batch(sr, hr, crop_border, "y")


def psnr_y(sr: torch.Tensor, hr: torch.Tensor, crop_border: int) -> float:
    """PSNR (dB) on Y of one uint8 (C, H, W) pair."""
    return float(psnr_batch(sr, hr, crop_border, "y"))


def ssim_y(sr: torch.Tensor, hr: torch.Tensor, crop_border: int) -> float:
    """SSIM on Y of one uint8 (C, H, W) pair."""
    return float(ssim_batch(sr, hr, crop_border, "y"))


def score(sr: torch.Tensor, hr: torch.Tensor, crop_border: int) -> dict[str, float]:
    """PSNR/SSIM of one float [0, 1] (3, H, W) SR image against its uint8 HR in both spaces (`SCORES`).

    On Y a grayscale HR is its own Y, so the SR output is reduced to one channel the same way (the mean of
    its channels, then rounded); on RGB a grayscale HR is copied to three channels, as BasicSR reads it.
    """
    sr = sr.detach().cpu()
    sr_y = to_uint8(sr.mean(0, keepdim=True) if hr.shape[0] == 1 else sr)
    sr_rgb, hr_rgb = to_uint8(sr), to_rgb(hr)
    return {
        "psnr_y": float(psnr_batch(sr_y, hr, crop_border, "y")),
        "ssim_y": float(ssim_batch(sr_y, hr, crop_border, "y")),
        "psnr_rgb": float(psnr_batch(sr_rgb, hr_rgb, crop_border, "rgb")),
        "ssim_rgb": float(ssim_batch(sr_rgb, hr_rgb, crop_border, "rgb")),
    }


PER_IMAGE_COLUMNS = ("set", "image", *SCORES, "lpips")


def per_image_csv(per_image: dict[str, dict[str, dict[str, float | None]]]) -> str:
    """`{set: {image: {metric: value}}}` as CSV text (`PER_IMAGE_COLUMNS`; full precision, empty LPIPS when
    unavailable)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PER_IMAGE_COLUMNS)
    for set_name, images in per_image.items():
        for image, values in images.items():
            writer.writerow(
                [
                    set_name,
                    image,
                    *("" if (v := values.get(k)) is None else repr(float(v)) for k in PER_IMAGE_COLUMNS[2:]),
                ]
            )
    return buf.getvalue()


@functools.cache
def warn_once(message: str) -> None:
    """Log a warning once per process (a command builds the metric for every run or set it scores)."""
    logging.getLogger(__name__).warning(message)


class LPIPSMetric:
    """LPIPS (`net` trunk: alex | vgg, the `lpips` package's learned linear heads of `version` 0.1 | 0.0) on
    float [0, 1] (N, 3, H, W) images.

    The linear heads ship inside the `lpips` package; the trunk (AlexNet's or VGG16's `features`) needs
    torchvision's ImageNet file, which `trainer.weights` loads offline. Without it `available` is False,
    `reason` says which file is missing and how to import it, one warning is logged, and calling the
    metric is an error: a random trunk would give a plausible-looking but meaningless number.
    """

    def __init__(self, device: str | torch.device = "cpu", net: str = "alex", version: str = "0.1") -> None:
        self.device = torch.device(device)
        self.net, self.version = net, version
        self.model: torch.nn.Module | None = None
        self.reason = ""
        try:
            model = lpips_model(net, version)
        except weight_files.MissingWeightsError as e:
            self.reason = f"LPIPS unavailable: {e}"
            warn_once(self.reason)
            return
        self.model = model if self.device.type == "cpu" else copy.deepcopy(model).to(self.device)

    @property
    def available(self) -> bool:
        return self.model is not None

    def describe(self) -> dict[str, str]:
        """What this metric is, for recording beside its values: net, version, trunk weights."""
        return {"net": self.net, "version": self.version, "weights": "imagenet" if self.available else "unavailable"}

    @torch.no_grad()
    def __call__(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            raise RuntimeError(self.reason)
        sr, hr = (t.to(self.device, torch.float32) * 2 - 1 for t in (sr, hr))
        return self.model(sr, hr).flatten()


@functools.cache
def lpips_model(net: str, version: str) -> torch.nn.Module:
    """The LPIPS network on the CPU (frozen, eval mode), built once per process and shared by its metrics; a
    local trial inherits the one its launcher built before forking it (`sweeper.search.executors.local`).
    MissingWeightsError (not cached) when the trunk's ImageNet file is absent."""
    return _build_lpips(weights.lpips_trunk(net, "imagenet"), net, version)


def _build_lpips(trunk: torch.nn.Sequential, net: str, version: str) -> torch.nn.Module:
    """An `lpips.LPIPS` (`net`, heads of `version`) with `trunk`'s weights and the package's linear heads, built offline."""
    import lpips  # imported on use: it loads scipy.ndimage, which nothing else here needs

    # lpips builds its trunk with torchvision's deprecated `pretrained=` argument: silence that warning.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, version=version, pretrained=False, pnet_rand=True, verbose=False)
    heads_file = Path(lpips.__file__).parent / f"weights/v{version}/{net}.pth"
    heads = torch.load(heads_file, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(heads, strict=False)
    # The heads are saved as lin0..lin4; `lins.*` are the same modules, reached through a ModuleList.
    if unexpected or any(k.startswith("lin") and not k.startswith("lins.") for k in missing):
        raise RuntimeError(f"lpips package weights do not match its model: {unexpected or missing}")
    # lpips splits the trunk's `features` into slices whose children keep their original indices.
    for i in range(model.net.N_slices):
        for name, module in getattr(model.net, f"slice{i + 1}").named_children():
            module.load_state_dict(trunk[int(name)].state_dict())
    return model.eval().requires_grad_(False)
