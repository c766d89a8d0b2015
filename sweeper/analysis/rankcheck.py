"""`sweeper rank-check study=NAME`: would successive halving have picked the same winner? (issue 12)

On a study run with `scheduler=none` every trial trained to the end and validated along the way
(`metrics.jsonl` val lines). Per stage this replays synchronous halving on those curves
(`sweeper.core.halving.replay`) and, at each rung, compares the ranking of all trials at the rung's budget
with their final ranking: Kendall's tau-b and Spearman's rho with exact one-sided permutation p-values
(`sweeper.correlate`, the same code as Table 4's check; "undefined" when either ranking is constant),
whether the final winner is still alive, and the trial-iterations halving would have spent against the
full grid. Rung budgets snap to the validation steps actually recorded; both are printed.

With repeats (`repeats=R`), a point is ranked on the mean over its repeats' curves, as halving promotes it,
and each rung's ranking gets intervals: every point halving trains to the rung is compared with the rung's best
by `sweeper.analysis.stats.compare` on its per-repeat values there (paired by seed; the validations along the
way keep set means, so the value of a repeat is its mean over sets and the interval is a paired t over
repeats). A rung whose ranks the intervals do not separate is said, with the points halving drops there
though nothing puts them behind the best. One seed per point measures no seed noise: no intervals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from optuna.trial import TrialState

from sweeper.analysis import correlate, stats
from sweeper.core import halving
from sweeper.core.overrides import Options, parse
from sweeper.core.repeats import grid_key, point_of, repeat_of
from sweeper.core.selection import HIGHER_IS_BETTER, TIE_BREAK, signed
from sweeper.core.trials import stage_ids
from trainer.errors import UserError
from trainer.scores import mean_if_all

Curve = dict[int, tuple[float, float]]  # step -> (signed select_by, signed tie-break); smaller is better


@dataclass(frozen=True)
class RungCheck:
    """One rung of the replay: how the ranking at its budget agrees with the final one."""

    rung: int
    budget: int
    alive: int  # trials halving trains to this budget
    kendall: float
    p_kendall: float
    spearman: float
    p_spearman: float
    undefined: str | None  # why no ranking exists at this budget (every trial scores the same)
    winner_alive: bool  # the full grid's winner is among the trials trained to this budget
    comparison: stats.Comparison | None  # the alive points against the rung's best (None: fewer than 2, or no value)
    dropped: list[str]  # the points halving stops at this rung (labels)

    @property
    def separable(self) -> str:
        """`winner` or `tie` (the intervals' verdict on the rung's ranking); `no intervals` with one seed."""
        if self.comparison is None:
            return "-"
        return "no intervals (one seed)" if self.comparison.kind == "untested" else self.comparison.kind

    @property
    def dropped_on_noise(self) -> list[str]:
        """The points halving stops here that the intervals do not put behind the rung's best."""
        c = self.comparison
        if c is None or c.kind == "untested":
            return []
        return [r.label for r in c.rows if r.label in self.dropped and not r.separated]


@dataclass(frozen=True)
class StageCheck:
    stage: str
    select_by: str
    trials: list[int]  # each point's first trial
    labels: dict[int, str]  # trial -> its point's label
    repeats: int  # the repeats every point has (its curves' mean is what halving ranks)
    planned: list[int]  # `halving.rung_budgets`
    budgets: list[int]  # snapped to recorded validation steps
    rungs: list[RungCheck]
    pick: int  # the trial halving would pick
    winner: int  # the full grid's winner
    halving_iters: int
    full_iters: int


def curve(trial_dir: Path, select_by: str) -> Curve:
    """The trial's validation curve: per recorded step, the mean over validation sets of each metric."""
    tie = TIE_BREAK[select_by]
    by_step: dict[int, list[dict]] = {}
    path = trial_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        record = json.loads(line)
        if record.get("kind") == "val":
            by_step.setdefault(record["step"], []).append(record)
    out: Curve = {}
    for step, records in by_step.items():
        first, second = (signed(m, mean_if_all([r.get(m) for r in records])) for m in (select_by, tie))
        out[step] = (first, second)
    return out


def snap(planned: list[int], recorded: list[int]) -> list[int]:
    """Each planned budget moved to the nearest recorded validation step (the earlier one on a tie), deduplicated."""
    return sorted({min(recorded, key=lambda s: (abs(s - b), s)) for b in planned})


def check_stage(stage: str, curves: dict[int, list[Curve]], iters: int, select_by: str, opts: Options,
                labels: dict[int, str] | None = None) -> StageCheck:  # fmt: skip
    """Replay halving on the points' curves (a point's first trial number -> one curve per repeat, the same
    repeats for every point), all trained to `iters`; `labels`: trial -> the point's name (default `trial N`)."""
    if len(curves) < 2:
        raise UserError(f"stage {stage} has {len(curves)} complete point(s): a ranking needs at least 2")
    names = labels or {t: f"trial {t}" for t in curves}
    recorded = sorted(set.intersection(*(set(c) for runs in curves.values() for c in runs)))
    if iters not in recorded:
        raise UserError(
            f"stage {stage}: not every trial recorded a validation at train.iters={iters}; was it run with scheduler=none?"
        )
    planned = halving.rung_budgets(iters, len(curves), opts.eta, opts.min_iters)
    budgets = snap(planned, recorded)
    per_repeat = {t: np.array([[c[b] for c in runs] for b in budgets]) for t, runs in curves.items()}  # (b, r, 2)
    scores = {t: {b: (*per_repeat[t][k].mean(axis=0), t) for k, b in enumerate(budgets)} for t in curves}
    alive = halving.replay(scores, budgets, opts.eta)
    trials = sorted(curves)
    final = np.array([scores[t][iters][0] for t in trials])
    winner = min(trials, key=lambda t: scores[t][iters])
    sign = -1.0 if HIGHER_IS_BETTER[select_by] else 1.0  # curves are signed (smaller is better); stats wants values
    rungs = []
    for k, (b, living) in enumerate(zip(budgets, alive, strict=True)):
        at = np.array([scores[t][b][0] for t in trials])
        p_rho, p_tau, _ = correlate.permutation_p(at, final)
        undefined = "every trial scores the same" if correlate.constant(at) or correlate.constant(final) else None
        m = sign * np.array([per_repeat[t][k][:, 0] for t in living])[:, :, None]  # m[point, repeat, one value]
        comparison = (
            stats.compare(m, HIGHER_IS_BETTER[select_by], [names[t] for t in living], metric=select_by)
            if len(living) > 1 and np.isfinite(m).all()
            else None
        )
        dropped = living[halving.keep(len(living), opts.eta, draining=True) :] if k + 1 < len(budgets) else []
        rungs.append(RungCheck(k, b, len(living), correlate.kendall(at, final), p_tau, correlate.spearman(at, final), p_rho,
                               undefined, winner in living, comparison, [names[t] for t in dropped]))  # fmt: skip
    spent = halving.iterations_spent([len(r) for r in alive], budgets)
    repeats = len(next(iter(curves.values())))
    return StageCheck(stage, select_by, trials, names, repeats, planned, budgets, rungs, alive[-1][0], winner,
                      spent * repeats, len(trials) * iters * repeats)  # fmt: skip


def stage_curves(storage, study_id: int, select_by: str) -> tuple[dict[int, list[Curve]], int, dict[int, str]]:
    """(a point's first trial number -> one curve per repeat, train.iters, trial -> point label) over the latest
    COMPLETE trial of each grid point and repeat, keeping the repeats every point has (they pair)."""
    recorded = storage.get_study_user_attrs(study_id).get(
        "scheduler", "none"
    )  # {"name", "budgets"} since scheduler=sha exists
    scheduler = recorded.get("name", "none") if isinstance(recorded, dict) else recorded
    if scheduler != "none":
        raise UserError(
            f"rank-check replays halving on full curves; this stage ran with scheduler={scheduler}: run the study with scheduler=none"
        )
    latest: dict = {}
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,)):
        latest.setdefault(grid_key(t.params), {})[repeat_of(t.params)] = t
    shared = sorted(set.intersection(*(set(by_repeat) for by_repeat in latest.values()))) if latest else []
    curves, labels, iters = {}, {}, set()
    for by_repeat in latest.values() if shared else []:
        folders = [Path(by_repeat[r].user_attrs["trial_dir"]) for r in shared]
        first = min(by_repeat[r].number for r in shared)
        curves[first] = [curve(folder, select_by) for folder in folders]
        labels[first] = " ".join(f"{k}={v}" for k, v in point_of(by_repeat[shared[0]].params).items())
        iters |= {yaml.safe_load((folder / "config.yaml").read_text())["train"]["iters"] for folder in folders}
    if len(iters) > 1:
        raise UserError(
            f"the trials of this stage trained for different train.iters ({sorted(iters)}); halving needs one budget"
        )
    return curves, iters.pop() if iters else 0, labels


def check_study(tokens: list[str]) -> list[StageCheck]:
    """Every stage of the study (or `stage=`) replayed."""
    opts = parse(tokens, allow_config=False)
    _, _, storage, stages = stage_ids(opts)
    out = []
    for name, sid in stages.items():
        select_by = opts.select_by or storage.get_study_user_attrs(sid).get("select_by", "lpips")
        curves, iters, labels = stage_curves(storage, sid, select_by)
        out.append(check_stage(name, curves, iters, select_by, opts, labels))
    return out


def to_rows(checks: list[StageCheck]) -> list[dict]:
    """Plain rows for CSV/Markdown/LaTeX: one per stage and rung."""
    rows = []
    for c in checks:
        for r in c.rungs:
            rows.append({
                "stage": c.stage, "rung": r.rung, "budget": r.budget, "alive": f"{r.alive}/{len(c.trials)}",
                "kendall": r.kendall, "p_kendall": r.p_kendall, "spearman": r.spearman, "p_spearman": r.p_spearman,
                "ranking": "undefined" if r.undefined else "defined", "winner_alive": "yes" if r.winner_alive else "no",
                "separable": r.separable, "dropped_on_noise": ", ".join(r.dropped_on_noise),
            })  # fmt: skip
    return rows


def halving_fate(c: StageCheck, r: RungCheck, label: str) -> str:
    """What halving does with a point alive at rung `r`: stops it, lets it go on, or (last rung) picks it."""
    if label in r.dropped:
        return "stops here"
    if r.rung + 1 < len(c.rungs):
        return "goes on"
    return "picked" if label == c.labels[c.pick] else "finished"


def interval_rows(checks: list[StageCheck]) -> list[dict]:
    """The rung rankings with intervals: one row per stage, rung and point halving trains to that rung (best
    first): its mean over repeats, how far behind the rung's best it is and that difference's interval (none
    for a stage with one seed per point)."""
    rows = []
    for c in checks:
        for r in c.rungs:
            if r.comparison is None or r.comparison.kind == "untested":
                continue
            for row in sorted(r.comparison.rows, key=lambda row: row.diff):
                rows.append({
                    "stage": c.stage, "rung": r.rung, "budget": r.budget, "point": row.label, "repeats": c.repeats,
                    f"mean_{c.select_by}": row.mean, "behind_best": row.diff,
                    "low": row.low, "high": row.high, "separated": "best" if row.best else "yes" if row.separated else "no",
                    "halving": halving_fate(c, r, row.label),
                })  # fmt: skip
    return rows


def summary(c: StageCheck) -> str:
    """The stage's verdict: budgets used, what halving would have picked and spent, and the rungs whose ranks
    the intervals do not separate."""
    same = (
        "the full grid's winner"
        if c.pick == c.winner
        else f"NOT the full grid's winner ({c.labels[c.winner]}, trial {c.winner})"
    )
    over = f" over {c.repeats} repeats" if c.repeats > 1 else ""
    text = (f"stage {c.stage} (by mean {c.select_by}{over}, {len(c.trials)} points): rung budgets {c.planned} snapped to the "
            f"recorded validation steps {c.budgets}\n  halving picks {c.labels[c.pick]} (trial {c.pick}), {same}; it would train "
            f"{c.halving_iters} of the full grid's {c.full_iters} trial-iterations ({c.halving_iters / c.full_iters:.0%})")  # fmt: skip
    for r in c.rungs:
        comp = r.comparison
        if comp is None or comp.kind == "winner":
            continue
        if comp.kind == "untested":
            text += f"\n  rung {r.rung}: one seed per point, no intervals: pass repeats=3 or more to see which ranks are real"
            break
        tied = ", ".join(t.label for t in comp.tied if not t.best)
        noise = (
            f"; halving stops {', '.join(r.dropped_on_noise)} there though nothing puts them behind"
            if r.dropped_on_noise
            else ""
        )
        text += f"\n  rung {r.rung} (budget {r.budget}): ranks not separable: {tied} not separated from {comp.best.label}{noise}"
    return text


def interval_note(checks: list[StageCheck]) -> str:
    """What the intervals of `interval_rows` are, in words."""
    tested = (r.comparison for check in checks for r in check.rungs if r.comparison and r.comparison.kind != "untested")
    c = next(tested, None)
    if c is None:
        return "one seed per point: no intervals"
    level = f"{1 - c.settings.alpha:.0%}"
    return (f"{level}, simultaneous over the pairs of each rung's points (Bonferroni); paired t over {c.repeats} repeats "
            "of each point's mean over the validation sets at the rung's budget")  # fmt: skip


def main(tokens: list[str]) -> None:
    """`sweeper rank-check study=NAME [stage=...] [scheduler.eta=3] [scheduler.min_iters=N] [select_by=...]`."""
    from sweeper.analysis.tables import rows_to_markdown

    checks = check_study(tokens)
    print(rows_to_markdown(to_rows(checks)))
    intervals = interval_rows(checks)
    if intervals:
        print(f"\nThe rung rankings' intervals ({interval_note(checks)}):\n")
        print(rows_to_markdown(intervals))
    for c in checks:
        print(summary(c))
    print(correlate.weakness_note(min(len(c.trials) for c in checks)))
