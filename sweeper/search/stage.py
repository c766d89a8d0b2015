"""A stage from start to end: its Optuna study and MLflow parent run opened (or found, with the same settings),
its trials worked to their end by polling the state machine (`sweeper.search.machine.StageWork`: `run_to_end`, with
the progress bars, `sweeper cancel`, `--detach` and Ctrl-C), and its winner concluded and recorded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.analysis import evidence, racing, stats
from sweeper.core.crashpoints import crash_point
from sweeper.core.identity import BOOKKEEPING, SETTINGS_KEYS, config_hash
from sweeper.core.overrides import stage_repeats
from sweeper.core.repeats import Unit, grid_key, mean_metrics, repeat_of, units
from sweeper.core.selection import HIGHER_IS_BETTER, rank, simplicity
from sweeper.core.studies import AUTO, Stage
from sweeper.core.workspace import point_key, resolved, stage_trials
from sweeper.search import tracking
from sweeper.search.faults import MachineHalt
from sweeper.search.machine import StageWork, read_result
from sweeper.search.progress import StageProgress
from sweeper.search.session import Run, stage_budgets
from trainer.config import build_config, flatten
from trainer.errors import UserError
from trainer.files import file_lock

POLL_S = 0.25  # seconds between two polls of the state machine


class StageCancelled(UserError):
    """`sweeper cancel` was run on the stage this process works on."""


def differences(was: dict[str, Any] | None, now: dict[str, Any]) -> str:
    """`: train.iters 12 then, 2 now; ...` over the keys that differ (none known for a stage recorded before
    its settings were: ""). Bookkeeping keys, which may change between runs, are left out."""
    if not was:
        return ""
    keys = sorted(k for k in was.keys() | now.keys() if k not in BOOKKEEPING and was.get(k) != now.get(k))
    return ": " + "; ".join(f"{k} {json.dumps(was.get(k))} then, {json.dumps(now.get(k))} now" for k in keys)


def open_stage(run: Run, stage: Stage, name: str, config: dict[str, Any]) -> StageWork:
    """The stage's Optuna study and MLflow run, created or found; a stage already in the workspace must
    have been started with the same settings, selection metric and scheduler."""
    full = f"{run.study.name}.{name}"
    iters = build_config(config).train.iters
    budgets = stage_budgets(run.opts, iters, len(stage.points()))
    resolved = build_config(config).to_dict()
    recorded = {"config_hash": config_hash(resolved), "select_by": run.select_by,
                "scheduler": {"name": run.opts.scheduler, "budgets": budgets}}  # fmt: skip
    way_out = f"repeat them, or pass another workspace= (or copy studies/{run.study.name}.yaml under a new name) to start afresh"
    direction = (
        optuna.study.StudyDirection.MAXIMIZE
        if HIGHER_IS_BETTER[run.select_by]
        else optuna.study.StudyDirection.MINIMIZE
    )
    mismatch = {
        "select_by": lambda was: f"stage {full} was started with select_by={was}; pass that, or use another workspace=",
        "config_hash": lambda was: f"stage {full} in {run.ws.root} was started with other settings"
                                   f"{differences(attrs.get('settings'), flatten(resolved))}; {way_out}",
        "scheduler": lambda was: f"stage {full} was started with scheduler={was['name']} (rung budgets {was['budgets']}); "
                                 "pass those settings, or use another workspace=",
    }  # fmt: skip
    with file_lock(run.ws.root / "setup.lock"):  # one Optuna study and one MLflow parent run, however many sweepers
        try:
            study_id = run.storage.create_new_study([direction], full)
        except optuna.exceptions.DuplicatedStudyError:
            study_id = run.storage.get_study_id_from_name(full)
        attrs: dict[str, Any] = run.storage.get_study_user_attrs(study_id)
        for key, value in {
            **recorded,
            "settings": flatten(resolved),
        }.items():  # a kill right after creating the study leaves them unset
            if key not in attrs:
                run.storage.set_study_user_attr(study_id, key, value)
            elif key in mismatch and attrs[key] != value:
                raise UserError(mismatch[key](attrs[key]))
        run.storage.set_study_user_attr(study_id, "cancelled", False)
        parent = tracking.stage_run(
            run.client, run.experiment_id, run.study.name, name, {**run.tags, "sweeper.stage": name}
        )
    return StageWork(run, name, stage, config, study_id, parent, budgets)


def work_stage(run: Run, stage: Stage, name: str, config: dict[str, Any], detach: bool) -> dict[str, str] | None:
    """Open a stage, work it to its end and return its winner (None when `detach` and jobs were submitted):
    every point's `repeats`, or a race (`repeats=auto`)."""
    repeats, max_repeats = stage_repeats(run.opts, stage)
    work = open_stage(run, stage, name, config)
    groups = (
        race(work, detach, max_repeats) if repeats == AUTO else run_to_end(work, detach, units(stage, int(repeats)))
    )
    return None if groups is None else conclude(work, groups)


def run_to_end(work: StageWork, detach: bool, asked: list[Unit]) -> dict[Any, list[FrozenTrial]] | None:
    """Poll the state machine until every unit (grid point and repeat) asked for is resolved and return their
    trials by unit (`point_key`; None when `detach` and jobs were submitted)."""
    run, full = work.run, f"{work.run.study.name}.{work.name}"
    wanted = {point_key(u.params) for u in asked}
    bars = StageProgress(full, len(asked))
    reopen = run.opts.retry_failed  # retry_failed=true re-opens the units that had failed when the run started, once
    try:
        while True:
            if run.storage.get_study_user_attrs(work.study_id).get("cancelled"):
                raise StageCancelled(f"stage {full} was cancelled (`sweeper cancel`); re-run to resume it")
            work.poll(asked, reopen)
            reopen = False
            groups = {k: v for k, v in stage_trials(run.storage, work.study_id).items() if k in wanted}
            bars.update(groups, run.opts.max_retries)
            if all(resolved(trials, run.opts.max_retries) for trials in groups.values()) and len(groups) >= len(wanted):
                break
            if detach and work.leases.owned("launched"):
                work.leases.release()
                return None
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        work.interrupt()
        raise
    except BaseException as e:
        work.leases.release()
        tracking.end_stage_run(
            run.client, work.parent, "KILLED" if isinstance(e, (StageCancelled, MachineHalt)) else "FAILED"
        )
        raise
    finally:
        bars.close()
    return groups


def race(work: StageWork, detach: bool, max_repeats: int) -> dict[Any, list[FrozenTrial]] | None:
    """`repeats=auto`: round k trains seed k of the points still racing (`sweeper.analysis.racing`). Each
    round's decision is recorded in the stage's `race` attr (rounds: the points racing in each round; `end`:
    why it stopped) before the next round's trials are enqueued, so a re-run resumes the race exactly."""
    storage, study_id = work.run.storage, work.study_id
    record = storage.get_study_user_attrs(study_id).get("race") or {"rounds": [list(range(len(work.stage.points())))]}
    while True:
        rounds = record["rounds"]
        wanted = {i: [k for k, alive in enumerate(rounds) if i in alive] for i in rounds[0]}
        groups = run_to_end(work, detach, units(work.stage, wanted))
        if groups is None or record.get("end"):
            survivors = {
                point_key(u.params) for u in units(work.stage, {i: wanted[i] for i in record.get("survivors", [])})
            }
            return groups if groups is None else {k: v for k, v in groups.items() if k in survivors}
        record = race_round(work, groups, record, max_repeats)
        with file_lock(work.run.ws.root / "setup.lock"):
            storage.set_study_user_attr(study_id, "race", record)
        crash_point("race_recorded")
        print(f"stage {work.name} race, round {len(record['rounds'])}: {record.get('end') or record['said']}")


def race_round(
    work: StageWork, groups: dict[Any, list[FrozenTrial]], record: dict[str, Any], max_repeats: int
) -> dict[str, Any]:
    """The race record after deciding its last round (a pure function of the record and the trials)."""
    alive, seeds = record["rounds"][-1], len(record["rounds"])
    points = work.stage.points()
    results: dict[int, list[dict[str, Any]]] = {}
    for i in alive:
        done = [
            next((t for t in groups.get(point_key(u.params), []) if t.state == TrialState.COMPLETE), None)
            for u in units(work.stage, {i: range(seeds)})
        ]
        found = [r for t in done if t is not None and (r := read_result(Path(t.user_attrs["trial_dir"]))) is not None]
        if len(found) == seeds:
            results[i] = found
    labels = [" ".join(f"{k}={v}" for k, v in points[i].items()) for i in results]
    space = build_config(work.config).metrics.space
    failed = [points[i] for i in alive if i not in results]
    m = racing.metric_array([results[i] for i in results], work.run.select_by, space) if results else None
    if m is None:
        said = (
            f"no {work.run.select_by} per image to race on: the race ends with every point in it"
            if results
            else "every racing point failed"
        )
        return {**record, "end": said, "survivors": list(results)}
    sets = racing.image_sets(next(iter(results.values()))[0])
    spent = racing.trainings(record["rounds"])
    d = racing.decide(m, HIGHER_IS_BETTER[work.run.select_by], labels, sets, max_repeats, work.run.opts.min_effect,
                      spent, work.run.opts.max_trainings)  # fmt: skip
    kept = [list(results)[p] for p in d.alive]
    said = d.reason + (f"; failed: {failed}" if failed else "")
    if d.done:
        fixed = len(points) * max_repeats
        said += f" ({spent} trainings; repeats={max_repeats} would have taken {fixed}: {fixed - spent} saved)"
        return {**record, "end": said, "survivors": kept, "trainings": spent, "fixed_trainings": fixed}
    return {"rounds": [*record["rounds"], kept], "said": said}


def trainings(
    work: StageWork, done: list[FrozenTrial]
) -> tuple[list[evidence.Trained], dict[str, FrozenTrial], dict[str, Any]]:
    """The stage's finished trainings for `evidence.stage_verdict` (a point labelled by the settings that vary in
    the stage), the trial standing for each point (its lowest repeat) and each point's simplicity key."""
    varying = [k for k in SETTINGS_KEYS if len({t.user_attrs["settings"].get(k) for t in done}) > 1] or list(
        SETTINGS_KEYS
    )
    space = build_config(work.config).metrics.space
    out: list[evidence.Trained] = []
    first: dict[str, FrozenTrial] = {}
    simple: dict[str, Any] = {}
    for t in sorted(done, key=lambda t: (repeat_of(t.params), t.number)):
        settings = t.user_attrs["settings"]
        point = " ".join(f"{k.removeprefix('loss.')}={settings[k]}" for k in varying)
        result = read_result(Path(t.user_attrs["trial_dir"])) or {}
        out.append(evidence.Trained(point, repeat_of(t.params), result, space))
        first.setdefault(point, t)
        simple[point] = simplicity(settings)
    return out, first, simple


def conclude(work: StageWork, groups: dict[Any, list[FrozenTrial]]) -> dict[str, str]:
    """Pick the winner among the COMPLETE trials by the stage's verdict (`evidence.stage_verdict`: paired
    intervals over repeats and images; without per-image values, the best mean over a point's repeats) and
    record it in Optuna and MLflow (idempotent: a re-run recomputes it, and may change it); log the
    comparison, the stage's table and plot. A tie is said loudly."""
    done = [t for trials in groups.values() for t in trials if t.state == TrialState.COMPLETE]
    failed = [
        trials[-1]
        for trials in groups.values()
        if not any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    ]
    for t in failed:
        print(
            f"warning: {work.run.study.name}.{work.name} trial {t.number} {t.params} failed: {t.user_attrs.get('reason')}"
        )
    if not done:
        tracking.end_stage_run(work.run.client, work.parent, "FAILED")
        raise UserError(
            f"stage {work.run.study.name}.{work.name}: every trial failed; see `sweeper status study={work.run.study.name}{work.run.opts.where}`"
        )
    reused = [t for t in done if "reused_from" in t.user_attrs]
    if reused:
        nothing = "nothing to halve" if work.run.opts.scheduler != "none" else "nothing to train"
        sources = ", ".join(sorted({t.user_attrs["reused_from"] for t in reused}))
        print(f"stage {work.name}: all {len(reused)} points reused from earlier trials ({sources}); {nothing}" if len(reused) == len(groups)
              else f"stage {work.name}: {len(reused)} of {len(groups)} points reused from earlier trials ({sources})")  # fmt: skip
    by_point: dict[Any, list[FrozenTrial]] = {}
    for t in sorted(
        done, key=lambda t: (repeat_of(t.params), t.number)
    ):  # a point's trial standing for it: its lowest repeat
        by_point.setdefault(grid_key(t.params), []).append(t)
    means = {
        p: mean_metrics(t.user_attrs["metrics"] for t in trials) for p, trials in by_point.items()
    }  # over the repeats
    trained, standing, simple = trainings(work, done)
    verdict = evidence.stage_verdict(trained, work.run.opts.rule(work.run.select_by), simple)
    if verdict is None:  # the metric is not there per image and repeat: the best mean, untested
        chosen = min(by_point, key=lambda p: (*rank(work.run.select_by, means[p]), by_point[p][0].number))
        best = by_point[chosen][0]
        record: dict[str, Any] = {
            "kind": "untested",
            "tied": [],
            "summary": f"UNTESTED: by mean {work.run.select_by} only (no paired values to compare)",
        }
    else:
        best = standing[verdict.chosen]
        chosen = grid_key(best.params)
        record = {"kind": verdict.kind, "tied": verdict.tied, "summary": verdict.summary()}
    race_end = work.run.storage.get_study_user_attrs(work.study_id).get("race", {}).get("end")
    if race_end:  # why the race stopped (separated, max_repeats, the budget) goes wherever the verdict is shown
        record["summary"] += f"; racing ended: {race_end}"
    winner = best.user_attrs["settings"]
    with file_lock(work.run.ws.root / "setup.lock"):  # two sweepers concluding at once: MLflow's tag inserts race
        crash_point("before_winner")
        work.run.storage.set_study_user_attr(work.study_id, "winner", winner)
        work.run.storage.set_study_user_attr(work.study_id, "winner_trial", best.number)
        work.run.storage.set_study_user_attr(work.study_id, "verdict", record)
        work.run.storage.set_study_user_attr(work.study_id, "finished_at", time.time())
        crash_point("after_winner")
        tracking.log_verdict(work.run.client, work.parent, record, stats.comparison_rows(verdict) if verdict else [])
        tracking.log_points(work.run.client, point_aggregates(by_point, means, standing, verdict))
        tracking.finish_stage(
            work.run.client, work.run.study.name, work.name, work.parent, best.user_attrs["mlflow_run_id"], winner
        )
    score, n = means[chosen][f"mean/{work.run.select_by}"], len(by_point[chosen])
    over = f" over {n} repeats" if n > 1 else ""
    print(
        f"stage {work.name}: winner trial {best.number} ({', '.join(f'{k}={v}' for k, v in winner.items())}), mean {work.run.select_by}{over} {score:.4f}"
    )
    print(f"stage {work.name}: {'!!! ' if record['kind'] != 'winner' else ''}{record['summary']}")
    if verdict is not None:
        print(resolution(verdict))
    return winner


def point_aggregates(by_point: dict[Any, list[FrozenTrial]], means: dict[Any, dict[str, float]],
                     standing: dict[str, FrozenTrial], verdict: stats.Verdict | None) -> dict[str, tuple[dict[str, float], str]]:  # fmt: skip
    """MLflow run id of every COMPLETE trial -> its point's aggregates (`tracking.log_points`): the means over the
    point's repeats, their number and the verdict's standing and interval of the point."""
    labels = {grid_key(t.params): label for label, t in standing.items()}
    standings = stats.standings(verdict) if verdict else {}
    out: dict[str, tuple[dict[str, float], str]] = {}
    for p, trials in by_point.items():
        where, compared = standings.get(labels.get(p, ""), ("untested", {}))
        numbers = {f"point/{k}": v for k, v in means[p].items() if k.startswith("mean/")}
        numbers |= {"point/repeats": float(len(trials)), **compared}
        out |= {t.user_attrs["mlflow_run_id"]: (numbers, where) for t in trials}
    return out


def resolution(verdict: stats.Verdict) -> str:
    """What this design can resolve, and what more repeats would buy (estimates), for the CLI."""
    c = verdict.comparisons[0]
    if c.resolvable is None:
        return "  resolution: unknown (no interval)"
    text = f"  resolution (estimate): differences below about {c.resolvable:.4g} {c.metric} are not resolved with {c.repeats} repeat(s)"
    close = [r for r in c.rows if not r.best and not r.separated]
    if c.repeats == 1:
        return (
            text
            + "; with one seed the intervals cover image sampling only: pass repeats=3 or more to measure seed noise"
        )
    for r in close:
        needed = f"about {r.repeats_needed} repeats" if r.repeats_needed else "more images, not more repeats"
        text += f"\n  {r.label}: {r.diff:.4g} behind {c.best.label}; resolving it would take {needed} (estimate)"
    return text
