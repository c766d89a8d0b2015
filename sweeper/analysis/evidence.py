"""Per-image metric values out of trial results, arranged as `m[point, repeat, image]` for
`sweeper.analysis.stats`, and a stage's verdict from its finished trainings (`stage_verdict`, called by the
search's `conclude` with plain data: this module never touches a store).

A trial's `result.json` (or a rung file) holds `per_image: {set: {image: {psnr_y, ssim_y, psnr_rgb, ssim_rgb,
lpips}}}` (issue 20); `per_image_values` is the one place that reads it, so a change of that layout is
adapted here. Results written before per-image values existed give each set's mean as a single value (the
comparison is then over repeats and sets only, and says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sweeper.analysis import stats
from sweeper.core.selection import HIGHER_IS_BETTER, Rule

SET_MEAN = "(set mean)"  # the image name of a set's only value when a result has no per-image values


def per_image_values(result: dict[str, Any], metric: str, space: str) -> dict[str, dict[str, float | None]]:
    """`{set: {image: value}}` of `metric` (psnr | ssim | lpips; PSNR/SSIM in `space`, y | rgb) from a trial
    result; a set's mean under the name SET_MEAN where the result has no per-image values."""
    key = metric if metric == "lpips" else f"{metric}_{space}"
    per_image = result.get("per_image") or {}
    if per_image:
        return {
            s: {name: (values or {}).get(key) for name, values in images.items()} for s, images in per_image.items()
        }
    return {
        s: {SET_MEAN: (means or {}).get(key, (means or {}).get(metric))}
        for s, means in (result.get("final") or {}).items()
    }


def only_set(result: dict[str, Any], set_name: str) -> dict[str, Any]:
    """The result reduced to one validation set (per-image values and mean)."""
    return {k: {set_name: result[k][set_name]} for k in ("per_image", "final") if set_name in (result.get(k) or {})}


@dataclass(frozen=True)
class Evidence:
    """One metric of a stage as `m[point, repeat, image]`, with each image's set (`groups`)."""

    m: np.ndarray
    groups: list[str]
    images: list[str]
    per_image: bool  # False: one value per set (results without per-image values)


def arrange(results: Sequence[Sequence[dict[str, Any]]], metric: str, space: str) -> Evidence | None:
    """`results[p][r]` = result of point p, repeat r (every point the same number of repeats) -> Evidence over
    the images every result scored (an image missing from one result is left out for all); None when any of
    them lacks the metric there (LPIPS unavailable)."""
    tables = [[per_image_values(res, metric, space) for res in point] for point in results]
    keys = [(s, name) for s, images in tables[0][0].items() for name in images]
    shared = [k for k in keys if all(k[0] in t and k[1] in t[k[0]] for point in tables for t in point)]
    if not shared:
        return None
    values = [[[t[s][name] for s, name in shared] for t in point] for point in tables]
    if any(v is None for point in values for rep in point for v in rep):
        return None
    return Evidence(np.array(values, dtype=float), [s for s, _ in shared], [name for _, name in shared],
                    per_image=all(name != SET_MEAN for _, name in shared))  # fmt: skip


@dataclass(frozen=True)
class Trained:
    """One finished training of a stage: its point (a label), its repeat, its result and PSNR/SSIM space."""

    point: str
    repeat: int
    result: dict[str, Any]
    space: str


def paired(trainings: Sequence[Trained]) -> tuple[list[str], list[int], list[list[Trained]]]:
    """The points (first-seen order), the repeats every point has (common random numbers pair only those) and
    `grid[p][r]`, the latest training of point p and repeat r."""
    points = list(dict.fromkeys(t.point for t in trainings))
    latest = {(t.point, t.repeat): t for t in trainings}
    repeats = sorted(set.intersection(*({r for (p, r) in latest if p == point} for point in points))) if points else []
    return points, repeats, [[latest[(p, r)] for r in repeats] for p in points]


def stage_verdict(
    trainings: Sequence[Trained], rule: Rule, simplicity: dict[str, Any] | None = None
) -> stats.Verdict | None:
    """The stage's verdict by `rule` over the paired repeats of its points; None when the first metric is not
    there to compare (LPIPS unavailable) or no repeat is shared by every point. `simplicity`: point -> sort key
    for `tie_break=simplest`."""
    points, repeats, grid = paired(trainings)
    if not repeats:
        return None
    results = [[t.result for t in row] for row in grid]
    space = grid[0][0].space
    chosen: list[tuple[str, np.ndarray, bool]] = []
    groups: list[str] | None = None
    for name in rule.metrics:
        ev = arrange(results, name, space)
        if ev is None or (groups is not None and ev.groups != groups):
            if not chosen:
                return None
            break  # a later metric without the same images is not consulted
        chosen.append((name, ev.m, HIGHER_IS_BETTER[name]))
        groups = ev.groups
    order = sorted(range(len(points)), key=lambda p: ((simplicity or {}).get(points[p], ()), p))
    settings = stats.Settings(alpha=rule.alpha, min_effect=rule.min_effect)
    return stats.decide(chosen, points, groups, settings, rule.tie_break, [order.index(p) for p in range(len(points))])
