"""Racing over seeds (`repeats=auto`, `max_repeats=M`): the decision of one round, a pure function of the
metrics the race has so far.

The idea of irace's F-race (Birattari et al. 2002; López-Ibáñez et al. 2016), on paired differences instead
of Friedman ranks: every grid point gets one seed, then round by round the points whose interval
(`sweeper.analysis.stats.compare`, simultaneous over the racing points' pairs) puts them behind the best by
more than `min_effect` are dropped, and only the others get another seed (repeat r of every point has the
same seed, so the differences stay paired). The race ends when one point is left (it is separated from all),
when the racing points have `max_repeats` seeds (a tie among them), when the next round would spend more than
the budget (`max_trainings`, trainings over all rounds: a round gives every racing point its next seed or
none, so the last seeds stay paired), or when nothing was left to race.

No point is dropped on one seed: its interval would cover image sampling only, and seed luck (Table 1's
mu=0.2 collapse) is exactly what a single seed cannot tell from a setting. Each round's intervals are
simultaneous within the round, not over the rounds (a race looks at its data up to M - 1 times; the final
verdict of the stage, `sweeper.search.stage.conclude`, is computed afresh on the survivors).

The stage records each round's decision in its Optuna study before the round's trials are enqueued
(`sweeper.search.stage`), so a crash between rounds resumes the race exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sweeper.analysis import stats


@dataclass(frozen=True)
class Decision:
    """What a round of the race decided: who races on (`alive`, indices into the points given), who was
    dropped, and whether the race is over (`reason` says why)."""

    alive: list[int]
    dropped: list[int]
    done: bool
    reason: str


def decide(m: np.ndarray, higher_is_better: bool, labels: Sequence[str], groups: Sequence | None, max_repeats: int,
           min_effect: float = 0.0, spent: int = 0, max_trainings: int | None = None) -> Decision:  # fmt: skip
    """One round over the racing points' metrics `m[point, repeat, image]` (each with the same repeats so far);
    `min_effect` (the first metric's units, `select.min_effect`): a point behind by less is not dropped;
    `spent`: the trainings the race has spent so far, against `max_trainings` (None: no budget)."""
    n_points, repeats, _ = np.shape(m)
    everyone = list(range(n_points))
    if n_points == 1:
        return Decision(everyone, [], True, f"{labels[0]} is the only point left")
    if repeats < 2:
        alive, dropped, said = everyone, [], "one seed measures no seed noise: no point is dropped"
    else:
        c = stats.compare(m, higher_is_better, labels, groups, settings=stats.Settings(min_effect=min_effect))
        alive = [p for p, row in enumerate(c.rows) if row.best or not row.separated]
        dropped = [p for p in everyone if p not in alive]
        said = f"{len(alive)} points race on to seed {repeats + 1}"
    if len(alive) == 1:
        return Decision(
            alive, dropped, True, f"{labels[alive[0]]} is separated from every other point after {repeats} seeds"
        )
    tied = ", ".join(labels[p] for p in alive)
    if repeats >= max_repeats:
        return Decision(alive, dropped, True, f"max_repeats={max_repeats} reached: {tied} are not separated")
    if max_trainings is not None and spent + len(alive) > max_trainings:
        return Decision(alive, dropped, True, f"budget spent: max_trainings={max_trainings}, {spent} spent and the "
                        f"next round needs {len(alive)}: {tied} are not separated")  # fmt: skip
    return Decision(alive, dropped, False, said)


def metric_array(results: Sequence[Sequence[dict]], metric: str, space: str) -> np.ndarray | None:
    """`m[point, repeat, image]` of `metric` (PSNR/SSIM in `space`) from each training's result.json
    (`per_image`), images in the first result's order; None when a value is missing (LPIPS unavailable)."""
    key = metric if metric == "lpips" else f"{metric}_{space}"
    order = [(s, name) for s, images in results[0][0]["per_image"].items() for name in images]
    try:
        m = np.array(
            [[[r["per_image"][s][name][key] for s, name in order] for r in point] for point in results], dtype=float
        )
    except (KeyError, TypeError, ValueError):
        return None
    return None if np.isnan(m).any() else m


def image_sets(result: dict) -> list[str]:
    """Each image's validation set, in `metric_array`'s order (the comparison weighs the sets equally)."""
    return [s for s, images in result["per_image"].items() for _ in images]


def trainings(rounds: Sequence[Sequence[int]]) -> int:
    """Trainings a race spent: round k trained one seed of each of its racing points."""
    return sum(len(alive) for alive in rounds)
