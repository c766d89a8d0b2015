"""The per-image scores a validation records (`SCORES`: PSNR and SSIM on Y and on RGB) and their means over a
set, without torch: `trainer.metrics` computes the scores, the trainer and the sweeper's reports average them."""

from __future__ import annotations

from collections.abc import Iterable

SCORES = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")  # what trainer.metrics.score returns, per image


def mean_if_all(values: list[float | None]) -> float | None:
    """The mean of `values`; None when there are none or one is missing."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present and len(present) == len(values) else None


def set_means(rows: Iterable[dict[str, float | None]], space: str) -> dict[str, float | None]:
    """The mean of each per-image value of a set, `psnr`/`ssim` (those of `space`) first; LPIPS is None
    unless every image has one."""
    rows = list(rows)
    means = {k: mean_if_all([r[k] for r in rows]) for k in SCORES}
    lpips = mean_if_all([r.get("lpips") for r in rows])
    return {"psnr": means[f"psnr_{space}"], "ssim": means[f"ssim_{space}"], "lpips": lpips, **means}
