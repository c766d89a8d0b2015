"""`sweeper rank-check study=NAME`: would successive halving have picked the same winner? (issue 12)

On a study run with `scheduler=none` every trial trained to the end and validated along the way
(`metrics.jsonl` val lines). Per stage this replays synchronous halving on those curves
(`sweeper.core.halving.replay`) and, at each rung, compares the ranking of all trials at the rung's budget
with their final ranking: Kendall's tau-b and Spearman's rho with exact one-sided permutation p-values
(`sweeper.correlate`, the same code as Table 4's check; "undefined" when either ranking is constant),
whether the final winner is still alive, and the trial-iterations halving would have spent against the
full grid. Rung budgets snap to the validation steps actually recorded; both are printed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from optuna.trial import TrialState

from sweeper.analysis import correlate
from sweeper.core import halving
from sweeper.core.overrides import Options, parse
from sweeper.core.selection import TIE_BREAK, signed
from sweeper.core.trials import stage_ids
from sweeper.core.workspace import point_key
from trainer.errors import UserError
from trainer.metrics import mean_if_all

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


@dataclass(frozen=True)
class StageCheck:
    stage: str
    select_by: str
    trials: list[int]
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


def check_stage(stage: str, curves: dict[int, Curve], iters: int, select_by: str, opts: Options) -> StageCheck:
    """Replay halving on the trials' curves (trial number -> curve), all trained to `iters`."""
    if len(curves) < 2:
        raise UserError(f"stage {stage} has {len(curves)} complete trial(s): a ranking needs at least 2")
    recorded = sorted(set.intersection(*(set(c) for c in curves.values())))
    if iters not in recorded:
        raise UserError(
            f"stage {stage}: not every trial recorded a validation at train.iters={iters}; was it run with scheduler=none?"
        )
    planned = halving.rung_budgets(iters, len(curves), opts.eta, opts.min_iters)
    budgets = snap(planned, recorded)
    scores = {t: {b: (*c[b], t) for b in budgets} for t, c in curves.items()}
    alive = halving.replay(scores, budgets, opts.eta)
    trials = sorted(curves)
    final = np.array([scores[t][iters][0] for t in trials])
    winner = min(trials, key=lambda t: scores[t][iters])
    rungs = []
    for k, (b, living) in enumerate(zip(budgets, alive, strict=True)):
        at = np.array([scores[t][b][0] for t in trials])
        p_rho, p_tau, _ = correlate.permutation_p(at, final)
        undefined = "every trial scores the same" if correlate.constant(at) or correlate.constant(final) else None
        rungs.append(RungCheck(k, b, len(living), correlate.kendall(at, final), p_tau, correlate.spearman(at, final), p_rho,
                               undefined, winner in living))  # fmt: skip
    spent = halving.iterations_spent([len(r) for r in alive], budgets)
    return StageCheck(
        stage, select_by, trials, planned, budgets, rungs, alive[-1][0], winner, spent, len(trials) * iters
    )


def stage_curves(storage, study_id: int, select_by: str) -> tuple[dict[int, Curve], int]:
    """(trial number -> curve, train.iters) for the latest COMPLETE trial of each grid point."""
    recorded = storage.get_study_user_attrs(study_id).get(
        "scheduler", "none"
    )  # {"name", "budgets"} since scheduler=sha exists
    scheduler = recorded.get("name", "none") if isinstance(recorded, dict) else recorded
    if scheduler != "none":
        raise UserError(
            f"rank-check replays halving on full curves; this stage ran with scheduler={scheduler}: run the study with scheduler=none"
        )
    latest = {}
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,)):
        latest[point_key(t.params)] = t
    curves, iters = {}, set()
    for t in latest.values():
        folder = Path(t.user_attrs["trial_dir"])
        curves[t.number] = curve(folder, select_by)
        iters.add(yaml.safe_load((folder / "config.yaml").read_text())["train"]["iters"])
    if len(iters) > 1:
        raise UserError(
            f"the trials of this stage trained for different train.iters ({sorted(iters)}); halving needs one budget"
        )
    return curves, iters.pop() if iters else 0


def check_study(tokens: list[str]) -> list[StageCheck]:
    """Every stage of the study (or `stage=`) replayed."""
    opts = parse(tokens, allow_config=False)
    _, _, storage, stages = stage_ids(opts)
    out = []
    for name, sid in stages.items():
        select_by = opts.select_by or storage.get_study_user_attrs(sid).get("select_by", "lpips")
        curves, iters = stage_curves(storage, sid, select_by)
        out.append(check_stage(name, curves, iters, select_by, opts))
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
            })  # fmt: skip
    return rows


def summary(c: StageCheck) -> str:
    """The stage's verdict in two lines: budgets used, and what halving would have picked and spent."""
    same = "the full grid's winner" if c.pick == c.winner else f"NOT the full grid's winner (trial {c.winner})"
    return (f"stage {c.stage} (by mean {c.select_by}, {len(c.trials)} trials): rung budgets {c.planned} snapped to the "
            f"recorded validation steps {c.budgets}\n  halving picks trial {c.pick}, {same}; it would train "
            f"{c.halving_iters} of the full grid's {c.full_iters} trial-iterations ({c.halving_iters / c.full_iters:.0%})")  # fmt: skip


def main(tokens: list[str]) -> None:
    """`sweeper rank-check study=NAME [stage=...] [scheduler.eta=3] [scheduler.min_iters=N] [select_by=...]`."""
    from sweeper.analysis.tables import rows_to_markdown

    checks = check_study(tokens)
    print(rows_to_markdown(to_rows(checks)))
    for c in checks:
        print(summary(c))
    print(correlate.weakness_note(min(len(c.trials) for c in checks)))
