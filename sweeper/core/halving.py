"""Successive halving over a stage's fixed grid: rung budgets and who goes on (`scheduler=sha`).

Pure functions, shared by the scheduler in `sweeper.search.machine` (asynchronous, ASHA) and the replay of
`sweeper rank-check` (synchronous, from recorded validation curves). A trial's "score" is any sort key
where smaller is better (e.g. `sweeper.core.selection.rank`), so ties fall to the tie-break metric, then the
lower trial number, the same way a stage picks its winner.

Why not Optuna's `SuccessiveHalvingPruner`: it decides once, when a trial reports, against whatever has
reported so far, so the first trial to reach a rung is always kept and, on a 7-point grid run one trial at
a time, most of the budget goes to the first trials. ASHA (Li et al., 2020) instead promotes a trial when a
slot is free and it is in the top 1/eta of the rung *so far*, else starts a new point; on a finite grid it
must also drain: once no point can still reach a rung, that rung's best goes on even where n/eta < 1.
Intermediate values are still reported to Optuna, so its tools see the rung curves.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import TypeVar

Score = tuple  # a sort key, smaller is better
K = TypeVar("K", bound=Hashable)  # what names a trial: a grid index, a trial number


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
