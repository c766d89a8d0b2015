"""`sweeper status`, `sweeper logs` and `sweeper cancel`: a study's trials as the Optuna record has them,
read without creating any store (the state machine that writes that record is `sweeper.search.machine`)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from sweeper.analysis import ledger
from sweeper.core.overrides import Options, parse
from sweeper.core.repeats import mean_metrics, point_of, repeat_of
from sweeper.core.trials import stage_ids
from sweeper.core.workspace import CANCELLED, Workspace, finish
from sweeper.search import tracking
from sweeper.search.executors import make_executor
from sweeper.search.progress import job_gone, read_progress, where
from trainer.errors import UserError


def trial_record(storage: BaseStorage, stage: str, t: FrozenTrial) -> dict[str, Any]:
    attrs = t.user_attrs
    gone = t.state == TrialState.RUNNING and attrs.get("phase") == "launched" and job_gone(attrs)  # its sweeper died
    end = t.datetime_complete or (dt.datetime.now() if t.state == TrialState.RUNNING and not gone else None)
    record = {
        "stage": stage, "number": t.number, "state": t.state.name, "params": {**attrs.get("settings", {}), **point_of(t.params)},
        "repeat": repeat_of(t.params),
        "metrics": attrs.get("metrics", {}), "duration_s": round((end - t.datetime_start).total_seconds(), 1) if end and t.datetime_start else None,
        "mlflow_run_id": attrs.get("mlflow_run_id"), "attempt": attrs.get("attempt", 1), "reason": attrs.get("reason"),
        "reused_from": attrs.get("reused_from"), "job_id": attrs.get("job_id"), "trial_dir": attrs.get("trial_dir"), "job_gone": gone,
        "reached_iters": attrs.get("reached_iters"), "rungs": sorted(map(int, attrs.get("rungs", {}))),
    }  # fmt: skip
    if "slurm_job_id" in attrs:
        from sweeper.search.executors.slurm import slurm_state

        record["slurm_job_id"] = attrs["slurm_job_id"]
        record["slurm_state"] = slurm_state(attrs["slurm_job_id"])
    if t.state == TrialState.RUNNING:
        record["progress"] = read_progress(Path(attrs.get("trial_dir", ".")))
    return record


@dataclass(frozen=True)
class StudyTrials:
    """A study's trials (`trial_record`s plus `winner`: the stage's winner or not), each stage's verdict and what they cost."""

    study: str
    stages: list[str]
    trials: list[dict[str, Any]]
    costs: list[ledger.StageCost]
    verdicts: dict[str, dict[str, Any]]  # stage -> its recorded verdict (issue 18)


def study_trials(opts: Options) -> StudyTrials:
    """Every trial of every stage of `opts.study` (UserError when it never ran); creates nothing."""
    name, _, storage, stages = stage_ids(opts)
    trials = [
        trial_record(storage, stage, t)
        for stage, sid in stages.items()
        for t in storage.get_all_trials(sid, deepcopy=False)
    ]
    attrs = {stage: storage.get_study_user_attrs(sid) for stage, sid in stages.items()}
    for t in trials:
        t["winner"] = attrs[t["stage"]].get("winner_trial") == t["number"]
    verdicts = {
        stage: a["verdict"] for stage, a in attrs.items() if "verdict" in a
    }  # issue 18: winner, tie or untested
    return StudyTrials(
        name, list(stages), trials, ledger.study_costs(storage, stages), verdicts
    )  # costs: issue 12's ledger


def status(tokens: list[str], fmt: str = "table") -> None:
    """`sweeper status study=NAME [--format json]`: every trial of every stage, each stage's verdict, the cost."""
    if fmt not in ("table", "json"):
        raise UserError(f"--format {fmt}: choose table or json")
    found = study_trials(parse(tokens, allow_config=False, recorded=True))
    if fmt == "json":
        out = {"study": found.study, "stages": found.stages, "trials": found.trials, "verdicts": found.verdicts,
               "cost": ledger.cost_rows(found.costs)}  # fmt: skip
        print(json.dumps(out, indent=1))
        return
    lines = [
        f"verdict {stage}: {'!!! ' if v['kind'] != 'winner' else ''}{v['summary']}"
        for stage, v in found.verdicts.items()
    ]
    print("\n".join([format_table(found.trials), *lines, *ledger.status_lines(found.costs)]))


def format_table(trials: list[dict[str, Any]]) -> str:
    """One row per trial; with repeats, a point's trials together (by repeat) under a row of their means."""
    rows: list[tuple[str, ...]] = [
        ("stage", "#", "state", "params", "rep", "psnr", "ssim", "lpips", "time", "progress / note")
    ]
    by_point: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for t in trials:
        by_point.setdefault((t["stage"], " ".join(f"{k}={v}" for k, v in t["params"].items())), []).append(t)
    with_repeats = any(t["repeat"] for t in trials)
    for (stage, params), group in by_point.items():
        group = sorted(group, key=lambda t: (t["repeat"], t["number"])) if with_repeats else group
        done = [t["metrics"] for t in group if t["state"] == "COMPLETE"]
        if with_repeats:
            m = mean_metrics(done)
            reps = len({t["repeat"] for t in group})
            rows.append((stage, "", f"{len(done)}/{reps} complete", params, "mean",
                         *(f"{m[f'mean/{k}']:.4f}" if f"mean/{k}" in m else "-" for k in ("psnr", "ssim", "lpips")), "", ""))  # fmt: skip
        rows += [trial_row(t, "" if with_repeats else params) for t in group]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    note = (
        "; rep = repeat (seed = seed + rep), a point's mean over its complete repeats above them"
        if with_repeats
        else ""
    )
    return "\n".join(lines + [f"(* = stage winner; metrics are means over the validation sets{note})"])


def trial_row(t: dict[str, Any], params: str) -> tuple[str, ...]:
    m = t["metrics"]
    p = t.get("progress") or {}
    note = where(p) if p else (t["reason"] or "")
    note = f"reused {t['reused_from']}" if t["reused_from"] else note
    note = f"stopped at {t['reached_iters']} it (halving)" if t["state"] == "PRUNED" else note
    note = f"slurm {t['slurm_job_id']} {t['slurm_state']} {note}" if "slurm_job_id" in t else note
    return (
        t["stage"], f"{t['number']}{'*' if t['winner'] else ''}", t["state"] + (" (job gone; re-run to resume)" if t["job_gone"] else ""), params,
        str(t["repeat"]), *(f"{m[f'mean/{k}']:.4f}" if f"mean/{k}" in m else "-" for k in ("psnr", "ssim", "lpips")),
        f"{t['duration_s']:.0f}s" if t["duration_s"] is not None else "-", note,
    )  # fmt: skip


def find_trial(opts: Options) -> tuple[str, FrozenTrial]:
    if opts.trial is None:
        raise UserError("which trial? add trial=N (numbers are in `sweeper status`)")
    _, _, storage, stages = stage_ids(opts)
    if len(stages) > 1:
        raise UserError(
            f"study {opts.study} has stages {', '.join(stages)}, each with its own trial numbers: add stage=NAME, "
            f"e.g. `sweeper logs study={opts.study} stage={next(iter(stages))} trial={opts.trial}{opts.where}`"
        )
    ((stage, sid),) = stages.items()
    try:
        return stage, storage.get_trial(storage.get_trial_id_from_study_id_trial_number(sid, opts.trial))
    except KeyError:
        raise UserError(f"trial={opts.trial}: stage {stage} has no such trial") from None


def logs(tokens: list[str]) -> None:
    """`sweeper logs study=NAME trial=N`: the trial's stdout and stderr."""
    opts = parse(tokens, allow_config=False, recorded=True)
    ws = Workspace.resolve(opts.workspace, opts.storage, opts.tracking_uri)
    _, trial = find_trial(opts)
    job_id = trial.user_attrs.get("job_id")
    if not job_id:
        raise UserError(
            f"trial {trial.number} was never launched ({trial.user_attrs.get('reused_from') or trial.state.name})"
        )
    executor = make_executor(trial.user_attrs.get("executor", "local"), {}, ws.root)
    for path in executor.log_paths(job_id):
        print(f"==> {path} <==")
        print(path.read_text(errors="replace") if path.exists() else "(not written yet)")


def cancel(tokens: list[str]) -> None:
    """`sweeper cancel study=NAME`: stop its queued and running trials; `sweeper run` resumes them later."""
    opts = parse(tokens, allow_config=False, recorded=True)
    ws = Workspace.resolve(opts.workspace, opts.storage, opts.tracking_uri)
    name, _, storage, stages = stage_ids(opts)
    stopped = 0
    for sid in stages.values():
        storage.set_study_user_attr(sid, "cancelled", True)
        for t in storage.get_all_trials(sid, deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            if finish(storage, sid, t.number, TrialState.FAIL, None, {"reason": f"{CANCELLED} by `sweeper cancel`"}):
                stopped += 1
                if job_id := t.user_attrs.get("job_id"):
                    make_executor(t.user_attrs.get("executor", "local"), {}, ws.root).cancel([job_id])
    tracking.kill_stage_runs(MlflowClient(ws.tracking_uri), name)
    print(
        f"{name}: cancelled {stopped} trial(s); `sweeper run study={name}{opts.where} ...` resumes them from their checkpoints"
    )
