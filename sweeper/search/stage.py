"""A stage from start to end: its Optuna study and MLflow parent run opened (or found, with the same settings),
its trials worked by the state machine (`sweeper.search.machine.StageWork`), and its winner concluded and recorded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.core.crashpoints import crash_point
from sweeper.analysis import evidence, stats
from sweeper.core.identity import SETTINGS_KEYS, config_hash
from sweeper.core.selection import HIGHER_IS_BETTER, rank, simplicity
from sweeper.core.studies import Stage
from sweeper.search import tracking
from sweeper.search.machine import StageWork, read_result
from sweeper.search.session import Run, stage_budgets
from trainer.config import build_config
from trainer.errors import UserError
from trainer.files import file_lock


def open_stage(run: Run, stage: Stage, name: str, config: dict[str, Any]) -> StageWork:
    """The stage's Optuna study and MLflow run, created or found; a stage already in the workspace must
    have been started with the same settings, selection metric and scheduler."""
    full = f"{run.study.name}.{name}"
    iters = build_config(config).train.iters
    budgets = stage_budgets(run.opts, iters, len(stage.points()))
    recorded = {"config_hash": config_hash(build_config(config).to_dict()), "select_by": run.select_by,
                "scheduler": {"name": run.opts.scheduler, "budgets": budgets}}  # fmt: skip
    direction = optuna.study.StudyDirection.MAXIMIZE if HIGHER_IS_BETTER[run.select_by] else optuna.study.StudyDirection.MINIMIZE
    mismatch = {
        "select_by": lambda was: f"stage {full} was started with select_by={was}; pass that, or use another workspace=",
        "config_hash": lambda was: f"stage {full} in {run.ws.root} was started with other settings; repeat them, or use another workspace=",
        "scheduler": lambda was: f"stage {full} was started with scheduler={was['name']} (rung budgets {was['budgets']}); "
                                 "pass those settings, or use another workspace=",
    }  # fmt: skip
    with file_lock(run.ws.root / "setup.lock"):  # one Optuna study and one MLflow parent run, however many sweepers
        try:
            study_id = run.storage.create_new_study([direction], full)
        except optuna.exceptions.DuplicatedStudyError:
            study_id = run.storage.get_study_id_from_name(full)
        attrs = run.storage.get_study_user_attrs(study_id)
        for key, value in recorded.items():  # a kill right after creating the study leaves them unset
            if key not in attrs:
                run.storage.set_study_user_attr(study_id, key, value)
            elif attrs[key] != value:
                raise UserError(mismatch[key](attrs[key]))
        run.storage.set_study_user_attr(study_id, "cancelled", False)
        parent = tracking.stage_run(run.client, run.experiment_id, run.study.name, name, {**run.tags, "sweeper.stage": name})
    return StageWork(run, name, stage, config, study_id, parent, budgets)



def work_stage(run: Run, stage: Stage, name: str, config: dict[str, Any], detach: bool) -> dict[str, str] | None:
    """Open a stage, work it to its end and return its winner (None when `detach` and jobs were submitted)."""
    work = open_stage(run, stage, name, config)
    groups = work.run_to_end(detach)
    return None if groups is None else conclude(work, groups)


def trainings(work: StageWork, done: list[FrozenTrial]) -> tuple[list[evidence.Trained], dict[str, FrozenTrial], dict[str, Any]]:
    """The stage's finished trainings for `evidence.stage_verdict` (a point labelled by the settings that vary in
    the stage), the trial standing for each point (its lowest repeat) and each point's simplicity key."""
    varying = [k for k in SETTINGS_KEYS if len({t.user_attrs["settings"].get(k) for t in done}) > 1] or list(SETTINGS_KEYS)
    space = build_config(work.config).metrics.space
    out, first, simple = [], {}, {}
    for t in sorted(done, key=lambda t: (repeat_of(t), t.number)):
        settings = t.user_attrs["settings"]
        point = " ".join(f"{k.removeprefix('loss.')}={settings[k]}" for k in varying)
        result = read_result(Path(t.user_attrs["trial_dir"])) or {}
        out.append(evidence.Trained(point, repeat_of(t), result, space))
        first.setdefault(point, t)
        simple[point] = simplicity(settings)
    return out, first, simple


def repeat_of(t: FrozenTrial) -> int:
    """The trial's repeat (0 for studies without repeats)."""
    return int(t.params.get("repeat", t.user_attrs.get("repeat", 0)))


def conclude(work: StageWork, groups: dict[Any, list[FrozenTrial]]) -> dict[str, str]:
    """Pick the winner among the COMPLETE trials by the stage's verdict (`evidence.stage_verdict`: paired
    intervals over repeats and images) and record it in Optuna and MLflow (idempotent: a re-run recomputes
    it, and may change it); log the comparison, the stage's table and plot. A tie is said loudly."""
    done = [t for trials in groups.values() for t in trials if t.state == TrialState.COMPLETE]
    failed = [trials[-1] for trials in groups.values() if not any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)]
    for t in failed:
        print(f"warning: {work.run.study.name}.{work.name} trial {t.number} {t.params} failed: {t.user_attrs.get('reason')}")
    if not done:
        tracking.end_stage_run(work.run.client, work.parent, "FAILED")
        raise UserError(f"stage {work.run.study.name}.{work.name}: every trial failed; see `sweeper status study={work.run.study.name}{work.run.opts.where}`")
    trained, standing, simple = trainings(work, done)
    verdict = evidence.stage_verdict(trained, work.run.opts.rule(work.run.select_by), simple)
    if verdict is None:  # the metric is not there per image and repeat: the best mean, untested
        best = min(done, key=lambda t: (*rank(work.run.select_by, t.user_attrs["metrics"]), t.number))
        record = {"kind": "untested", "tied": [], "summary": f"UNTESTED: by mean {work.run.select_by} only (no paired values to compare)"}
    else:
        best = standing[verdict.chosen]
        record = {"kind": verdict.kind, "tied": verdict.tied, "summary": verdict.summary()}
    winner = best.user_attrs["settings"]
    with file_lock(work.run.ws.root / "setup.lock"):  # two sweepers concluding at once: MLflow's tag inserts race
        crash_point("before_winner")
        work.run.storage.set_study_user_attr(work.study_id, "winner", winner)
        work.run.storage.set_study_user_attr(work.study_id, "winner_trial", best.number)
        work.run.storage.set_study_user_attr(work.study_id, "verdict", record)
        work.run.storage.set_study_user_attr(work.study_id, "finished_at", time.time())
        crash_point("after_winner")
        tracking.log_verdict(work.run.client, work.parent, record, stats.comparison_rows(verdict) if verdict else [])
        tracking.finish_stage(work.run.client, work.run.study.name, work.name, work.parent, best.user_attrs["mlflow_run_id"], winner)
    score = best.user_attrs["metrics"][f"mean/{work.run.select_by}"]
    print(f"stage {work.name}: winner trial {best.number} ({', '.join(f'{k}={v}' for k, v in winner.items())}), mean {work.run.select_by} {score:.4f}")
    print(f"stage {work.name}: {'!!! ' if record['kind'] != 'winner' else ''}{record['summary']}")
    if verdict is not None:
        print(resolution(verdict))
    return winner


def resolution(verdict: stats.Verdict) -> str:
    """What this design can resolve, and what more repeats would buy (estimates), for the CLI."""
    c = verdict.comparisons[0]
    if c.resolvable is None:
        return "  resolution: unknown (no interval)"
    text = f"  resolution (estimate): differences below about {c.resolvable:.4g} {c.metric} are not resolved with {c.repeats} repeat(s)"
    close = [r for r in c.rows if not r.best and not r.separated]
    if c.repeats == 1:
        return text + "; with one seed the intervals cover image sampling only: pass repeats=3 or more to measure seed noise"
    for r in close:
        needed = f"about {r.repeats_needed} repeats" if r.repeats_needed else "more images, not more repeats"
        text += f"\n  {r.label}: {r.diff:.4g} behind {c.best.label}; resolving it would take {needed} (estimate)"
    return text
