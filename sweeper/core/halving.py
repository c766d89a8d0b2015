"""Successive halving over a stage's fixed grid: rung budgets and who goes on (`scheduler=sha`).

Pure functions, shared by the scheduler in `sweeper.search.machine` (asynchronous, ASHA, over a grid trained
in repeats: `grid_promotions`) and the replay of `sweeper rank-check` (synchronous, from recorded validation
curves). A trial's "score" is any sort key where smaller is better (e.g. `sweeper.core.selection.rank`), so
ties fall to the tie-break metric, then the lower trial number, the same way a stage picks its winner. Plain
values in and out (no Optuna or MLflow objects); imports nothing of the project.

Why not Optuna's `SuccessiveHalvingPruner`: it decides once, when a trial reports, against whatever has
reported so far, so the first trial to reach a rung is always kept and, on a 7-point grid run one trial at
a time, most of the budget goes to the first trials. ASHA (Li et al., 2020) instead promotes a trial when a
slot is free and it is in the top 1/eta of the rung *so far*, else starts a new point; on a finite grid it
must also drain: once no point can still reach a rung, that rung's best goes on even where n/eta < 1.
Intermediate values are still reported to Optuna, so its tools see the rung curves.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

Score = tuple  # a sort key, smaller is better
K = TypeVar("K", bound=Hashable)  # what names a trial: a grid index, a trial number
Metrics = Mapping[str, float]
Status = Literal["heading", "paused", "done"]  # heading: waiting, or training towards its rung; done: ended


def default_rungs(n_points: int, eta: int) -> int:
    """k = ceil(log_eta n): halving by eta k times leaves about one point (the winner) at the last rung.

    Fewer rungs (k = 1, "1/eta of the points reach the last rung") would spend more than half of the naive
    budget on a 7-point grid; the first rung still compares every point.
    """
    return max(0, math.ceil(math.log(n_points, eta) - 1e-9)) if n_points > 1 else 0


def rung_budgets(iters: int, n_points: int, eta: int = 3, min_iters: int | None = None) -> list[int]:
    """GAN-iteration budgets r, r*eta, r*eta^2, ... < iters, then iters (strictly increasing, each >= 1).

    `min_iters` (r) defaults to iters / eta^k with k from `default_rungs`.
    """
    if eta < 2:
        raise ValueError(f"scheduler.eta={eta}: must be an integer >= 2")
    if min_iters is None:
        min_iters = iters / eta ** default_rungs(n_points, eta)
    if not 0 < min_iters <= iters:
        raise ValueError(f"scheduler.min_iters={min_iters}: must be in 1..train.iters={iters}")
    budgets: list[int] = []
    r = float(min_iters)
    while round(r) < iters:
        b = max(1, round(r))
        if not budgets or b > budgets[-1]:
            budgets.append(b)
        r *= eta
    return budgets + [iters]


def keep(n: int, eta: int, draining: bool) -> int:
    """How many of the n trials that finished a rung go on: floor(n / eta), at least 1 once draining."""
    top = n // eta
    return max(top, 1) if draining and n else top


def promotions(
    finished: Mapping[int, Mapping[K, Score]],
    promoted: Mapping[int, set[K]],
    open_rungs: set[int],
    eta: int,
    last: int,
) -> list[tuple[K, int]]:
    """ASHA: (trial, rung it goes on to) for every trial that may go on now, highest rung first.

    `finished[k]` holds the score of each trial that finished rung k; `promoted[k]` the trials already sent
    from rung k to rung k + 1; `open_rungs` the rungs some trial may still finish (one is running towards
    it, or points of the grid are not started yet). A rung that is not open is draining: its best goes on
    even when fewer than eta trials finished it. `last` is the index of the last rung (no promotion from it).
    """
    out: list[tuple[K, int]] = []
    for k in sorted(finished, reverse=True):
        if k >= last:
            continue
        draining = not any(j <= k for j in open_rungs)
        scores = finished[k]
        best = sorted(scores, key=lambda t: (scores[t], str(t)))[: keep(len(scores), eta, draining)]
        out += [(t, k + 1) for t in best if t not in promoted.get(k, set())]
    return out


@dataclass(frozen=True)
class Attempt:
    """One trial of a grid as the scheduler sees it (read off its Optuna record by the state machine)."""

    number: int  # the Optuna trial
    point: Hashable  # its grid point (the repeats of a point share it)
    repeat: int
    rung: int  # index of the budget it trains to, or is paused at the end of
    status: Status
    rungs: Mapping[int, Metrics]  # the metrics of each rung it finished, by rung index


def grid_promotions(
    attempts: list[Attempt],
    asked: Collection[tuple[Hashable, int]],
    score: Callable[[Hashable, list[Metrics]], Score],
    eta: int,
    last: int,
) -> tuple[list[tuple[int, int]], list[int]]:
    """ASHA (`promotions`) over a grid whose points are trained in repeats: a point goes on as a whole, once every
    repeat asked for (`asked`: (point, repeat)) finished the rung, on `score(point, its repeats' metrics there)`.

    Returns (trial, rung it goes on to) for each paused attempt to launch now, best point first (then the repeats
    left behind by an earlier promotion of their point), and the paused attempts to stop: all of them once the
    grid is quiescent (nothing heads to a rung, nothing goes on). Only attempts at asked units are scored;
    every paused or heading one counts. `last` is the index of the last rung.
    """
    finished: dict[int, dict[Hashable, dict[int, Metrics]]] = {}  # rung -> point -> repeat -> metrics
    promoted: dict[int, set[Hashable]] = {}  # rung -> points with an attempt sent beyond it
    for a in attempts:
        if (a.point, a.repeat) in asked:
            for k, metrics in a.rungs.items():
                finished.setdefault(k, {}).setdefault(a.point, {})[a.repeat] = metrics
            for k in range(a.rung):
                promoted.setdefault(k, set()).add(a.point)
    size = Counter(point for point, _ in set(asked))
    scores = {k: {p: score(p, list(by_r.values())) for p, by_r in points.items() if len(by_r) == size[p]}
              for k, points in finished.items()}  # fmt: skip
    open_rungs = {a.rung for a in attempts if a.status == "heading"}
    moves = promotions(scores, promoted, open_rungs, eta, last)
    going = set(moves) | {(p, k + 1) for k, points in promoted.items() for p in points}  # a point's repeats follow
    paused = [a for a in attempts if a.status == "paused"]
    chosen = [a for a in paused if (a.point, a.rung + 1) in going]
    best = [p for p, _ in moves]
    chosen.sort(key=lambda a: best.index(a.point) if a.point in best else len(best))
    stop = [a.number for a in paused] if not chosen and not open_rungs else []
    return [(a.number, a.rung + 1) for a in chosen], stop


def replay(curves: Mapping[K, Mapping[int, Score]], budgets: list[int], eta: int) -> list[list[K]]:
    """Synchronous halving replayed on full curves: the trials alive at each rung, best first.

    `curves[t][b]` is trial t's score at budget b (every trial must have every budget). Rung 0 holds every
    trial; rung k + 1 the best `keep(n_k, eta, draining=True)` of rung k by their score at budget k.
    """
    alive = sorted(curves, key=lambda t: (curves[t][budgets[0]], str(t)))
    rungs = [alive]
    for k in range(1, len(budgets)):
        prev = rungs[-1][: keep(len(rungs[-1]), eta, draining=True)]
        rungs.append(sorted(prev, key=lambda t: (curves[t][budgets[k]], str(t))))
    return rungs


def iterations_spent(survivors: list[int], budgets: list[int]) -> int:
    """Trial-iterations of a halving run where survivors[k] trials trained to budgets[k] (each resumes)."""
    spent, previous = 0, 0
    for n, b in zip(survivors, budgets, strict=True):
        spent += n * (b - previous)
        previous = b
    return spent
