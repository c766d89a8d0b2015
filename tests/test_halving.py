"""Rung arithmetic and the promotion rule of `scheduler=sha` (sweeper/core/halving.py)."""

import pytest

from sweeper.core.halving import (
    Attempt,
    default_rungs,
    grid_promotions,
    iterations_spent,
    keep,
    promotions,
    replay,
    rung_budgets,
)


def test_default_rungs_leave_about_one_point_at_the_last_rung():
    assert [default_rungs(n, 3) for n in (1, 2, 3, 4, 7, 9, 10)] == [0, 1, 1, 2, 2, 2, 3]


@pytest.mark.parametrize(
    ("iters", "n", "eta", "min_iters", "expected"),
    [
        (400_000, 7, 3, None, [44_444, 133_333, 400_000]),
        (12, 7, 3, None, [1, 4, 12]),
        (12, 4, 2, None, [3, 6, 12]),
        (100, 7, 3, 10, [10, 30, 90, 100]),
        (5, 7, 3, None, [1, 2, 5]),  # 5/9 rounds up to 1; budgets strictly increase
        (40, 1, 3, None, [40]),
    ],
)
def test_rung_budgets(iters, n, eta, min_iters, expected):
    assert rung_budgets(iters, n, eta, min_iters) == expected


@pytest.mark.parametrize(("args", "message"), [((12, 7, 1), "eta=1"), ((12, 7, 3, 20), "min_iters=20")])
def test_rung_budgets_refuse_bad_settings(args, message):
    with pytest.raises(ValueError, match=message):
        rung_budgets(*args)


def test_keep_floors_and_drains_to_one():
    assert [keep(n, 3, False) for n in range(7)] == [0, 0, 0, 1, 1, 1, 2]
    assert [keep(n, 3, True) for n in range(7)] == [0, 1, 1, 1, 1, 1, 2]


def test_asha_promotes_once_a_rung_has_eta_finishers_and_never_twice():
    finished = {0: {"a": (0.3,), "b": (0.1,)}}
    assert promotions(finished, {}, open_rungs={0}, eta=3, last=2) == []  # 2 finishers: top 0 while open
    finished[0]["c"] = (0.2,)
    assert promotions(finished, {}, open_rungs={0}, eta=3, last=2) == [("b", 1)]
    assert promotions(finished, {0: {"b"}}, open_rungs={0, 1}, eta=3, last=2) == []


def test_asha_drains_closed_rungs_and_looks_at_high_rungs_first():
    finished = {0: {"a": (0.3,), "b": (0.1,), "c": (0.2,), "d": (0.4,)}, 1: {"b": (0.5,)}}
    # nothing can reach rung 0 or 1 any more: rung 1's only finisher goes on to the last rung
    assert promotions(finished, {0: {"b"}}, open_rungs=set(), eta=3, last=2) == [("b", 2)]
    # a trial still running towards rung 1 keeps rung 1 open
    assert promotions(finished, {0: {"b"}}, open_rungs={1}, eta=3, last=2) == []


def test_ties_go_to_the_lower_trial():
    finished = {0: {2: (0.1,), 1: (0.1,), 3: (0.9,)}}
    assert promotions(finished, {}, open_rungs=set(), eta=3, last=1) == [(1, 1)]


def attempt(number, point, repeat, rung, status, **finished):
    """An attempt whose finished rungs are given as r<k>=<value of metric v>."""
    return Attempt(number, point, repeat, rung, status, {int(k[1:]): {"v": v} for k, v in finished.items()})


def mean_v(point, repeats):
    return (sum(r["v"] for r in repeats) / len(repeats), point)


def test_a_point_goes_on_whole_once_every_repeat_finished_the_rung():
    asked = {(p, r) for p in "ab" for r in (0, 1)}
    b = [attempt(3, "b", 0, 0, "paused", r0=0.5), attempt(4, "b", 1, 0, "paused", r0=0.5)]
    a0 = attempt(1, "a", 0, 0, "paused", r0=0.1)
    # a's second repeat still trains towards rung 0: a is not scored, rung 0 is open, b alone is not in the top 1/2
    assert grid_promotions([a0, attempt(2, "a", 1, 0, "heading"), *b], asked, mean_v, eta=2, last=2) == ([], [])
    # both finished, on their mean (0.2 < 0.5): both repeats of a go on to rung 1, nothing is stopped
    a1 = attempt(2, "a", 1, 0, "paused", r0=0.3)
    assert grid_promotions([a0, a1, *b], asked, mean_v, eta=2, last=2) == ([(1, 1), (2, 1)], [])
    # a repeat left behind (one slot was free) follows its point later, whatever rung 0 says now
    a0 = attempt(1, "a", 0, 1, "heading", r0=0.1)
    assert grid_promotions([a0, a1, *b], asked, mean_v, eta=2, last=2) == ([(2, 1)], [])


def test_higher_rungs_go_first_and_a_quiescent_grid_stops_its_paused_attempts():
    asked = {(p, 0) for p in "abcdef"}
    rest = [attempt(n, p, 0, 0, "paused", r0=0.3 + n / 100) for n, p in enumerate("cdef", start=3)]
    grid = [attempt(1, "a", 0, 1, "paused", r0=0.1, r1=0.4), attempt(2, "b", 0, 0, "paused", r0=0.2), *rest]
    # rung 1 drains (a to the last rung) before rung 0 sends its second best of six (b)
    assert grid_promotions(grid, asked, mean_v, eta=3, last=2) == ([(1, 2), (2, 1)], [])
    ended = [attempt(1, "a", 0, 2, "done", r0=0.1, r1=0.4), attempt(2, "b", 0, 1, "done", r0=0.2, r1=0.5), *rest]
    assert grid_promotions(ended, asked, mean_v, eta=3, last=2) == ([], [3, 4, 5, 6])  # nothing heads anywhere


def test_only_asked_units_are_scored_but_every_paused_repeat_follows_its_point():
    grid = [attempt(1, "a", 0, 0, "paused", r0=0.9), attempt(2, "a", 1, 0, "paused", r0=0.1)]
    assert grid_promotions(grid, {("a", 0)}, mean_v, eta=3, last=1) == ([(1, 1), (2, 1)], [])


def test_replay_and_the_iterations_it_spends():
    budgets = [1, 4, 12]
    final = {"a": 5, "b": 1, "c": 3, "d": 2, "e": 4, "f": 6, "g": 7}  # b wins at the end
    early = {"a": 1, "b": 3, "c": 2, "d": 4, "e": 5, "f": 6, "g": 7}  # but ranks third at rung 0
    curves = {t: {1: (early[t],), 4: (early[t],), 12: (final[t],)} for t in final}
    rungs = replay(curves, budgets, eta=3)
    assert rungs == [["a", "c", "b", "d", "e", "f", "g"], ["a", "c"], ["a"]]
    spent = iterations_spent([len(r) for r in rungs], budgets)
    assert spent == 7 * 1 + 2 * 3 + 1 * 8 == 21
    assert spent / (7 * 12) < 0.4
