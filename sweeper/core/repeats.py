"""Repeats as a study axis: every grid point trained R times, repeat r with seed `seed + r` for *every* point.

Common random numbers: repeat r of every point starts from the same generator and discriminator weights and
sees the same patches, crops and flips (the trainer's init and batches depend on the seed only), so two
points differ within a repeat only by their settings. Differences between points are then paired by repeat
(and by test image), which is what lets a few seeds show small effects (`sweeper.analysis.stats`).

A repeat is an ordinary trial of the state machine: its Optuna params are the grid point's plus `repeat`
(an int), its config's `seed` is the stage's seed + repeat (so its config hash, and reuse, are per repeat),
and its folder is `trials/<study>/<stage>/<point index>` for repeat 0, `<point index>-r<r>` for the others.
A trial recorded without a `repeat` param is repeat 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sweeper.core.studies import Stage

REPEAT = "repeat"  # the Optuna param of a trial's repeat index
Key = tuple[tuple[str, str], ...]  # a grid point as a hashable, sorted key (without the repeat)


def point_of(params: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's grid point: its params without the repeat."""
    return {k: v for k, v in params.items() if k != REPEAT}


def repeat_of(params: Mapping[str, Any]) -> int:
    return int(params.get(REPEAT, 0))


def grid_key(params: Mapping[str, Any]) -> Key:
    """The grid point of a trial (or of a point's params) as a hashable key; repeats of one point share it."""
    return tuple(sorted((k, str(v)) for k, v in point_of(params).items()))


@dataclass(frozen=True)
class Unit:
    """One training of a stage: grid point number `index` (its place in `Stage.points()`), repeat `repeat`."""

    index: int
    point: dict[str, str]
    repeat: int

    @property
    def params(self) -> dict[str, Any]:
        return {**self.point, REPEAT: self.repeat}

    @property
    def folder(self) -> str:
        """The trial folder's name within the stage's folder (every attempt of the unit shares it)."""
        return str(self.index) if self.repeat == 0 else f"{self.index}-r{self.repeat}"


def units(stage: Stage, repeats: Mapping[int, Iterable[int]] | int) -> list[Unit]:
    """The units of a stage: `repeats` R (repeats 0..R-1 of every point), or point index -> its repeats."""
    points = stage.points()
    wanted = {i: range(repeats) for i in range(len(points))} if isinstance(repeats, int) else repeats
    return [Unit(i, points[i], r) for i in sorted(wanted) for r in sorted(wanted[i])]


def unit_config(config: dict[str, Any], stage: Stage, params: Mapping[str, Any]) -> dict[str, Any]:
    """The training-config overrides of one trial: the stage's config, its grid point's settings, and the seed
    of its repeat (the stage's `seed`, default 0, plus the repeat index)."""
    out = {**config, **stage.overrides(point_of(params))}
    return out | {"seed": int(out.get("seed", 0)) + repeat_of(params)}


def mean_metrics(repeats: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """A point's metrics as the mean over its repeats' (a key missing from any repeat is left out)."""
    rows = list(repeats)
    keys = set.intersection(*(set(r) for r in rows)) if rows else set()
    return {k: sum(float(r[k]) for r in rows) / len(rows) for k in sorted(keys)}
