"""`sweeper run`: a study's stages as Optuna studies, trials on an executor, results logged to MLflow.

One stage = one Optuna study `<study>.<stage>` whose grid points are claimed, launched, watched and
finished by this loop (the record itself lives in `sweeper.workspace`). Everything is checked before any
store is created; every step is safe to interrupt: re-running the same command picks the study up.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from mlflow import MlflowClient
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from sweeper import ledger, tracking
from sweeper.executors import Executor, TrialJob, make_executor
from sweeper.executors.local import process_start
from sweeper.overrides import Options, parse, require_study
from sweeper.progress import StageProgress, job_gone, read_progress, show, trial_states
from sweeper.studies import Stage, Study, label, load
from sweeper.workspace import CANCELLED, Workspace, claim, enqueue, finish, point_key, resolved, stage_trials
from trainer.files import file_lock, write_bytes_atomic, write_text_atomic
from trainer.config import build_config, flatten, parse_value
from trainer.errors import UserError

POLL_S = 0.25
BOOKKEEPING = {"train.device", "data.num_workers", "data.cache", "train.log_every", "train.ckpt_every", "train.threads"}  # not part of a trial's identity
SUMMARY_KEYS = ("mu", "beta", "arch", "loss.perceptual")
TIE_BREAK = {"lpips": "psnr", "psnr": "lpips", "ssim": "psnr"}
LOWER_IS_BETTER = {"lpips"}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def config_hash(config: dict[str, Any]) -> str:
    """A trial's identity: its resolved config minus bookkeeping keys. Equal hashes = the same training.

    Without a ResNet loss (mu=inf, or loss.perceptual=vgg) beta and c change nothing, so they are left out:
    a beta stage at a winning mu=inf reuses one run instead of training four identical ones.
    """
    flat = flatten(config)
    resnet_used = flat["loss.perceptual"] == "static" or (
        flat["loss.perceptual"] == "dp" and not math.isinf(float(parse_value(str(flat["mu"]))))
    )
    ignored = BOOKKEEPING if resnet_used else BOOKKEEPING | {"beta", "loss.c"}
    identity = {k: v for k, v in flat.items() if k not in ignored}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def summary(config: dict[str, Any]) -> dict[str, str]:
    """The settings a reader compares trials by, as labels (mu=inf as "inf")."""
    f = flatten(config)
    return {k: label(f[k]) for k in SUMMARY_KEYS}


# --- Checks before anything is created --------------------------------------------------------------


def selection_metric(opts: Options) -> str:
    if opts.select_by:
        return opts.select_by
    if opts.preset == "smoke":
        print("preset=smoke: winners are picked by mean PSNR (select_by=psnr); pass select_by=lpips for the paper's criterion")
        return "psnr"
    return "lpips"


def check_weights(config: dict[str, Any], preset: str, select_by: str) -> dict[str, Any]:
    """The weights policy, said before training: returns the config with `weights` settled.

    Missing ImageNet extractor weights: preset=smoke falls back to weights=random with a warning, other
    presets stop naming the files (unless weights=random is given). LPIPS without AlexNet weights stops
    when it is the selection metric.
    """
    from trainer import weights

    config = dict(config)
    kind = str(config.get("weights", "imagenet"))
    lacking = weights.missing(["vgg19", "resnet50"]) if kind == "imagenet" else []
    if lacking and preset == "smoke":
        print(f"warning: ImageNet weights missing ({', '.join(f.name for f in lacking)}): preset=smoke trains with weights=random (plumbing only)")
        config["weights"] = "random"
    elif lacking:
        raise weights.MissingWeightsError(lacking[0], weights.cache_dir() / lacking[0].name, also=lacking[1:])
    elif kind != "imagenet":
        weights.describe(kind)
    if weights.missing(["alexnet"]):
        if select_by == "lpips":
            alexnet = weights.FILES["alexnet"]
            raise UserError(
                f"select_by=lpips needs LPIPS, but the AlexNet weights {alexnet.name} are missing from {weights.cache_dir()}; "
                f"`sweeper weights import FILE` them or pass select_by=psnr"
            )
        print(f"note: LPIPS unavailable (no AlexNet weights): trials record lpips as null; selecting by {select_by}")
    return config


def check_data(config: dict[str, Any]) -> None:
    """Open the validation data and the training images' headers once, so a missing root or an unreadable
    image fails now (the training sets are prepared by the first trial that needs them, or `sweeper data prepare`)."""
    from trainer.data import check_train_sets, load_val_sets

    cfg = build_config(config)
    load_val_sets(cfg)
    check_train_sets(cfg)


# --- The run ----------------------------------------------------------------------------------------


@dataclass
class Run:
    """What one `sweeper run` works with."""

    study: Study
    opts: Options
    ws: Workspace
    select_by: str
    executor: Executor
    storage: BaseStorage
    client: MlflowClient
    experiment_id: str
    tags: dict[str, str]  # common tags of stage and trial runs
    owner: str  # this process, as recorded on the trials it runs


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{process_start(os.getpid())}"


def owner_alive(owner: str) -> bool:
    """Whether the sweeper process that claimed a trial still runs (assumed so when on another machine)."""
    host, pid, start = owner.rsplit(":", 2)
    return host != socket.gethostname() or process_start(int(pid)) == start


def study_winner(storage: BaseStorage, study: str) -> dict[str, str] | None:
    """The winner recorded by the latest finished stage of `study` in a storage, or None."""
    winners = []
    for s in optuna.get_all_study_summaries(storage):
        if s.study_name.startswith(f"{study}.") and "winner" in s.user_attrs:
            winners.append((s.user_attrs["finished_at"], s.user_attrs["winner"]))
    return max(winners)[1] if winners else None


def base_config(study: Study, opts: Options, ws: Workspace) -> dict[str, Any]:
    """Study config, then inputs from earlier studies' winners, then the user's overrides."""
    searched = {k: s.name for s in study.stages for k in s.searched_keys()}
    for key in opts.config:
        if key in searched:
            raise UserError(f"{key}= is what stage {searched[key]!r} of study {study.name} searches; remove it (or write your own study file)")
    config = dict(study.config)
    for key, source in study.inputs.items():
        if key in opts.config:
            continue
        winner = study_winner(ws.open_storage(), source) if ws.exists() else None
        if winner is None:
            raise UserError(f"study {study.name} takes {key} from the winner of study {source}, which has none in {ws.root}; run study={source} first or pass {key}=VALUE")
        config[key] = parse_value(winner[key])
        print(f"{key}={winner[key]} (winner of study {source})")
    return {**config, **opts.config}


def main(tokens: list[str], detach: bool = False) -> None:
    opts = parse(tokens)
    study = load(require_study(opts))
    rounds = opts.rounds or 1
    if rounds > 1 and not study.alternate:
        raise UserError(f"rounds={rounds}: study {study.name} does not alternate; rounds= applies to studies like paper")
    ws = Workspace.resolve(opts.workspace, opts.storage, opts.tracking_uri)
    executor = make_executor(opts.executor, opts.executor_options, ws.root, opts.preset)  # settings first, then weights and data
    if detach and executor.name == "local":
        raise UserError("--detach needs executor=slurm: local trials are watched by this process")
    if executor.name == "slurm":
        executor.check(ws.sqlite_file())  # sbatch --test-only of the options; a warning for SQLite storage
    select_by = selection_metric(opts)
    config = check_weights(base_config(study, opts, ws), opts.preset, select_by)
    for stage in study.stages:  # every trial config valid before anything is created
        for point in stage.points():
            build_config({**config, **stage.overrides(point)})
    check_data(config)

    ws.root.mkdir(parents=True, exist_ok=True)
    tags = {"sweeper.study": study.name, "sweeper.preset": opts.preset, "sweeper.select_by": select_by,
            "sweeper.weights": str(config.get("weights", "imagenet")), "sweeper.git_commit": tracking.git_commit()}  # fmt: skip
    with file_lock(ws.root / "setup.lock"):  # sweepers started together: one creates the stores and the experiment
        client = MlflowClient(ws.tracking_uri)
        run = Run(study, opts, ws, select_by, executor, ws.open_storage(), client,
                  tracking.experiment(client, study.name, ws.artifacts_dir), tags, owner_id())  # fmt: skip
    fixed: dict[str, Any] = {}
    previous = None
    before = trial_states(run.storage, study.name)
    for r in range(1, rounds + 1):
        for stage in study.stages:
            winner = run_stage(run, stage, stage.name if r == 1 else f"{stage.name}_r{r}", {**config, **fixed}, detach)
            if winner is None:
                print(f"submitted; follow with `sweeper status study={study.name}{opts.where}`, re-run the same command to collect results")
                return
            if study.alternate:
                fixed |= {k: parse_value(winner[k]) for k in stage.searched_keys()}
        if winner == previous:
            print(f"round {r} kept the winner of round {r - 1}: stopping")
            break
        previous = winner
    where = opts.where
    if trial_states(run.storage, study.name) == before:
        print(f"\n{study.name}: nothing to do, every trial had finished in {ws.root} (another workspace= starts afresh)")
    print(f"\n{study.name}: winner {', '.join(f'{k}={v}' for k, v in winner.items())} (by mean {select_by})")
    print(f"  trials:  sweeper status study={study.name}{where}")
    print(f"  MLflow:  sweeper ui{where}")
    print(f"  tables:  sweeper report study={study.name}{where}")


def open_stage(run: Run, name: str, stage: Stage, config: dict[str, Any]) -> int:
    """The stage's Optuna study id; a stage already in the workspace must have been started the same way."""
    full = f"{run.study.name}.{name}"
    direction = "minimize" if run.select_by in LOWER_IS_BETTER else "maximize"
    sampler = optuna.samplers.GridSampler({k: list(v) for k, v in stage.grid.items()})
    identity = config_hash(build_config(config).to_dict())
    try:
        s = optuna.create_study(storage=run.storage, study_name=full, direction=direction, sampler=sampler)
        s.set_user_attr("config_hash", identity)
        s.set_user_attr("select_by", run.select_by)
    except optuna.exceptions.DuplicatedStudyError:
        s = optuna.load_study(study_name=full, storage=run.storage, sampler=sampler)
        if s.user_attrs.get("select_by", run.select_by) != run.select_by:
            raise UserError(f"stage {full} was started with select_by={s.user_attrs['select_by']}; pass that, or use another workspace=") from None
        if s.user_attrs.get("config_hash", identity) != identity:
            raise UserError(f"stage {full} in {run.ws.root} was started with other settings; repeat them, or use another workspace=") from None
    s.set_user_attr("cancelled", False)
    return run.storage.get_study_id_from_name(full)


def run_stage(run: Run, stage: Stage, name: str, config: dict[str, Any], detach: bool) -> dict[str, str] | None:
    """Run one stage to the end (None when `detach` and trials were submitted); returns the winner."""
    stage_tags = {**run.tags, "sweeper.stage": name}
    with file_lock(run.ws.root / "setup.lock"):  # one Optuna study and one MLflow parent run, however many sweepers
        study_id = open_stage(run, name, stage, config)
        parent = tracking.stage_run(run.client, run.experiment_id, run.study.name, name, stage_tags)
    points = stage.points()
    mine: dict[int, str] = {}  # trial number -> job id, for the trials this process watches
    bars = StageProgress(f"{run.study.name}.{name}", len(points))
    try:
        while True:
            if run.storage.get_study_user_attrs(study_id).get("cancelled"):
                raise UserError(f"stage {run.study.name}.{name} was cancelled (`sweeper cancel`); re-run to resume it")
            with run.ws.claim_lock():
                enqueue(run.storage, study_id, run.ws, run.study.name, name, stage.grid, points, run.opts.max_retries)
            adopt(run, study_id, mine)
            for number, job_id in list(mine.items()):
                if not job_id or run.executor.state(job_id) == "ENDED":
                    finish_trial(run, study_id, parent, stage_tags, number)
                    del mine[number]
            batch: list[TrialJob] = []
            while len(mine) + len(batch) < run.executor.slots():
                with run.ws.claim_lock():
                    trial = claim(run.storage, study_id)
                if trial is None:
                    break
                if job := start_trial(run, study_id, parent, stage_tags, stage, config, trial):
                    batch.append(job)
            mine |= submit_trials(run, study_id, batch)
            groups = stage_trials(run.storage, study_id)
            if detach and mine:
                return None
            bars.update(groups, run.opts.max_retries)
            if all(resolved(trials, run.opts.max_retries) for trials in groups.values()) and len(groups) >= len(points):
                break
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        if run.executor.name == "local":
            run.executor.cancel(list(mine.values()))
        raise
    finally:
        bars.close()
    return conclude(run, study_id, name, parent, groups)


def adopt(run: Run, study_id: int, mine: dict[int, str]) -> None:
    """Take over RUNNING trials whose sweeper process died (kill -9, --detach): watch their jobs, or finish them."""
    for t in run.storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("owner")
        if t.number in mine or (owner and owner_alive(owner)) or (not owner and time.time() - t.datetime_start.timestamp() < 60):
            continue  # a live sweeper's trial (or one being claimed right now)
        trial_id = run.storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        run.storage.set_trial_user_attr(trial_id, "owner", run.owner)
        mine[t.number] = t.user_attrs.get("job_id", "")


def start_trial(run: Run, study_id: int, parent: str, tags: dict[str, str], stage: Stage,
                config: dict[str, Any], trial: FrozenTrial) -> TrialJob | None:  # fmt: skip
    """Prepare a claimed trial (its config.yaml); returns the job to submit, or None when it was settled at once (duplicate, reused)."""
    trial_id = run.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    cfg = build_config({**config, **stage.overrides(trial.params)}).to_dict()
    identity = config_hash(cfg)
    run.storage.set_trial_user_attr(trial_id, "owner", run.owner)
    run.storage.set_trial_user_attr(trial_id, "config_hash", identity)
    earlier = [t for t in stage_trials(run.storage, study_id).get(point_key(trial.params), []) if t.number < trial.number]
    if any(t.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.WAITING) for t in earlier):
        finish(run.storage, study_id, trial.number, TrialState.PRUNED, None, {"reason": "duplicate grid point (enqueued twice)"})
        return None
    trial_dir = Path(trial.user_attrs["trial_dir"])
    write_text_atomic(trial_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    source = reusable(run, identity)
    if source is not None:
        copy_outcome(Path(source[1]), trial_dir)
        run.storage.set_trial_user_attr(trial_id, "reused_from", source[0])
        finish_trial(run, study_id, parent, tags, trial.number)
        return None
    return TrialJob(run.study.name, tags["sweeper.stage"], trial.number, trial_dir)


def copy_outcome(source: Path, trial_dir: Path) -> None:
    """Give a reused trial its own folder: the source's metrics and samples, then (atomically, last) its
    result.json, beside the trial's own config.yaml (which records this grid point's settings)."""
    if (source / "samples").is_dir():
        shutil.copytree(source / "samples", trial_dir / "samples", dirs_exist_ok=True)
    if (source / "metrics.jsonl").exists():
        shutil.copyfile(source / "metrics.jsonl", trial_dir / "metrics.jsonl")
    write_bytes_atomic(trial_dir / "result.json", (source / "result.json").read_bytes())


def submit_trials(run: Run, study_id: int, jobs: list[TrialJob]) -> dict[int, str]:
    """Submit prepared trials in one call (one SLURM job array) and record each job id on its trial."""
    job_ids = run.executor.submit(jobs) if jobs else []
    for job, job_id in zip(jobs, job_ids, strict=True):
        trial_id = run.storage.get_trial_id_from_study_id_trial_number(study_id, job.number)
        run.storage.set_trial_user_attr(trial_id, "job_id", job_id)
        run.storage.set_trial_user_attr(trial_id, "executor", run.executor.name)
        if run.executor.name == "slurm":
            run.storage.set_trial_user_attr(trial_id, "slurm_job_id", job_id)
    return {job.number: job_id for job, job_id in zip(jobs, job_ids, strict=True)}


def reusable(run: Run, identity: str) -> tuple[str, str] | None:
    """("<study>.<stage>#<n>", trial folder) of a complete trial anywhere in the workspace with this config hash."""
    for s in run.storage.get_all_studies():
        study_id = run.storage.get_study_id_from_name(s.study_name)
        for t in run.storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.user_attrs.get("config_hash") == identity and "reused_from" not in t.user_attrs:
                return f"{s.study_name}#{t.number}", t.user_attrs["trial_dir"]
    return None


def read_result(trial_dir: Path) -> dict[str, Any] | None:
    try:
        result = json.loads((trial_dir / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def finish_trial(run: Run, study_id: int, parent: str, tags: dict[str, str], number: int) -> None:
    """Read a trial's result.json: log a complete trial to MLflow and COMPLETE it, else FAIL it with the reason."""
    trial = run.storage.get_trial(run.storage.get_trial_id_from_study_id_trial_number(study_id, number))
    if trial.state.is_finished():
        return  # finished by another sweeper process (or cancelled)
    attrs = trial.user_attrs
    trial_dir = Path(attrs["trial_dir"])
    result = read_result(trial_dir)
    metrics = {**tracking.final_means(result)} if result and result.get("status") == "complete" else {}
    if f"mean/{run.select_by}" not in metrics:
        logs_cmd = f"sweeper logs study={run.study.name} stage={tags['sweeper.stage']} trial={number}{run.opts.where}"
        reason = (result or {}).get("reason") or f"the job ended without result.json (killed or crashed: `{logs_cmd}`)"
        if result and "reused_from" not in attrs:  # keep the attempt's result; the retry resumes from the checkpoint
            os.replace(trial_dir / "result.json", trial_dir / f"result.attempt-{attrs.get('attempt', 1)}.json")
        if result and result.get("status") == "complete":
            reason = f"no {run.select_by} in result.json (select_by={run.select_by})"
        finish(run.storage, study_id, number, TrialState.FAIL, None, {"reason": reason})
        return
    config = yaml.safe_load((trial_dir / "config.yaml").read_text())
    extra = {"sweeper.reused_from": attrs["reused_from"]} if "reused_from" in attrs else {}
    if "slurm_job_id" in attrs:
        extra["sweeper.slurm_job_id"] = attrs["slurm_job_id"]
    run_id = tracking.log_trial(run.client, run.experiment_id, parent, trial_dir, config,
                                {**tags, "sweeper.trial_number": str(number), **extra})  # fmt: skip
    metrics |= {f"{s}/{m}": v for s, values in result["final"].items() for m, v in values.items() if isinstance(v, (int, float))}
    finish(run.storage, study_id, number, TrialState.COMPLETE, metrics[f"mean/{run.select_by}"],
           {"mlflow_run_id": run_id, "metrics": metrics, "duration_s": result.get("duration_s"), "summary": summary(config)})  # fmt: skip


def rank(select_by: str, trial: FrozenTrial) -> tuple[float, float, int]:
    """Sort key, best first: the selection metric, then its tie-break metric, then the trial number."""

    def signed(metric: str) -> float:
        value = trial.user_attrs["metrics"].get(f"mean/{metric}", float("nan"))
        value = float("inf") if value != value else (value if metric in LOWER_IS_BETTER else -value)
        return value

    return signed(select_by), signed(TIE_BREAK[select_by]), trial.number


def conclude(run: Run, study_id: int, name: str, parent: str, groups: dict[Any, list[FrozenTrial]]) -> dict[str, str]:
    """Pick and record the stage's winner; log the stage's table and plot."""
    done = [t for trials in groups.values() for t in trials if t.state == TrialState.COMPLETE]
    failed = [trials[-1] for trials in groups.values() if not any(t.state == TrialState.COMPLETE for t in trials)]
    for t in failed:
        print(f"warning: {run.study.name}.{name} trial {t.number} {t.params} failed: {t.user_attrs.get('reason')}")
    if not done:
        raise UserError(f"stage {run.study.name}.{name}: every trial failed; see `sweeper status study={run.study.name}{run.opts.where}`")
    best = min(done, key=lambda t: rank(run.select_by, t))
    winner = best.user_attrs["summary"]
    run.storage.set_study_user_attr(study_id, "winner", winner)
    run.storage.set_study_user_attr(study_id, "winner_trial", best.number)
    run.storage.set_study_user_attr(study_id, "finished_at", time.time())
    tracking.finish_stage(run.client, run.study.name, name, parent, best.user_attrs["mlflow_run_id"], winner)
    score = best.user_attrs["metrics"][f"mean/{run.select_by}"]
    print(f"stage {name}: winner trial {best.number} ({', '.join(f'{k}={v}' for k, v in winner.items())}), mean {run.select_by} {score:.4f}")
    return winner


# --- status, logs, cancel, train ---------------------------------------------------------------------


def stage_ids(opts: Options) -> tuple[str, Workspace, BaseStorage, dict[str, int]]:
    """(study, workspace, storage, stage name -> Optuna study id) of a study that has run; never creates a store."""
    name = require_study(opts)
    ws = Workspace.resolve(opts.workspace, opts.storage, opts.tracking_uri)
    storage = ws.open_storage() if ws.exists() else None
    prefix = f"{name}."
    stages = {} if storage is None else {
        s.study_name[len(prefix):]: storage.get_study_id_from_name(s.study_name) for s in storage.get_all_studies() if s.study_name.startswith(prefix)
    }  # fmt: skip
    if not stages:
        raise UserError(f"study {name} has not been run in workspace {ws.root} (start it with `sweeper run study={name}{opts.where}`)")
    if opts.stage is not None and opts.stage not in stages:
        raise UserError(f"stage={opts.stage!r}: study {name} has stages {', '.join(stages)}")
    return name, ws, storage, {k: v for k, v in stages.items() if opts.stage in (None, k)}


def trial_record(storage: BaseStorage, stage: str, t: FrozenTrial) -> dict[str, Any]:
    attrs = t.user_attrs
    gone = t.state == TrialState.RUNNING and job_gone(attrs)  # its sweeper died: no clock keeps running
    end = t.datetime_complete or (dt.datetime.now() if t.state == TrialState.RUNNING and not gone else None)
    record = {
        "stage": stage, "number": t.number, "state": t.state.name, "params": {**attrs.get("summary", {}), **t.params},
        "metrics": attrs.get("metrics", {}), "duration_s": round((end - t.datetime_start).total_seconds(), 1) if end and t.datetime_start else None,
        "mlflow_run_id": attrs.get("mlflow_run_id"), "attempt": attrs.get("attempt", 1), "reason": attrs.get("reason"),
        "reused_from": attrs.get("reused_from"), "job_id": attrs.get("job_id"), "trial_dir": attrs.get("trial_dir"), "job_gone": gone,
    }  # fmt: skip
    if "slurm_job_id" in attrs:
        from sweeper.executors.slurm import slurm_state

        record["slurm_job_id"] = attrs["slurm_job_id"]
        record["slurm_state"] = slurm_state(attrs["slurm_job_id"])
    if t.state == TrialState.RUNNING:
        record["progress"] = read_progress(Path(attrs.get("trial_dir", ".")))
    return record


def status(tokens: list[str], fmt: str = "table") -> None:
    """`sweeper status study=NAME [--format json]`: every trial of every stage."""
    if fmt not in ("table", "json"):
        raise UserError(f"--format {fmt}: choose table or json")
    name, _, storage, stages = stage_ids(parse(tokens, allow_config=False))
    trials = [trial_record(storage, stage, t) for stage, sid in stages.items() for t in storage.get_all_trials(sid, deepcopy=False)]
    winners = {stage: storage.get_study_user_attrs(sid).get("winner_trial") for stage, sid in stages.items()}
    for t in trials:
        t["winner"] = winners[t["stage"]] == t["number"]
    costs = ledger.study_costs(storage, stages)  # issue 12: the cost ledger's totals per stage
    if fmt == "json":
        print(json.dumps({"study": name, "stages": list(stages), "trials": trials, "cost": ledger.cost_rows(costs)}, indent=1))
        return
    print("\n".join([format_table(trials), *ledger.status_lines(costs)]))


def format_table(trials: list[dict[str, Any]]) -> str:
    rows = [("stage", "#", "state", "params", "psnr", "ssim", "lpips", "time", "progress / note")]
    for t in trials:
        m = t["metrics"]
        p = t.get("progress") or {}
        note = f"{p.get('stage', '')} {p.get('step', 0)}/{p.get('total', '?')}" if p else (t["reason"] or "")
        note = f"reused {t['reused_from']}" if t["reused_from"] else note
        note = f"slurm {t['slurm_job_id']} {t['slurm_state']} {note}" if "slurm_job_id" in t else note
        rows.append((
            t["stage"], f"{t['number']}{'*' if t['winner'] else ''}", t["state"] + (" (job gone; re-run to resume)" if t["job_gone"] else ""), " ".join(f"{k}={v}" for k, v in t["params"].items()),
            *(f"{m[f'mean/{k}']:.4f}" if f"mean/{k}" in m else "-" for k in ("psnr", "ssim", "lpips")),
            f"{t['duration_s']:.0f}s" if t["duration_s"] is not None else "-", note,
        ))  # fmt: skip
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines + ["(* = stage winner; metrics are means over the validation sets)"])


def find_trial(opts: Options) -> tuple[str, FrozenTrial]:
    if opts.trial is None:
        raise UserError("which trial? add trial=N (numbers are in `sweeper status`)")
    _, _, storage, stages = stage_ids(opts)
    if len(stages) > 1:
        raise UserError(f"study {opts.study} has stages {', '.join(stages)}, each with its own trial numbers: add stage=NAME, "
                        f"e.g. `sweeper logs study={opts.study} stage={next(iter(stages))} trial={opts.trial}{opts.where}`")
    ((stage, sid),) = stages.items()
    try:
        return stage, storage.get_trial(storage.get_trial_id_from_study_id_trial_number(sid, opts.trial))
    except KeyError:
        raise UserError(f"trial={opts.trial}: stage {stage} has no such trial") from None


def logs(tokens: list[str]) -> None:
    """`sweeper logs study=NAME trial=N`: the trial's stdout and stderr."""
    opts = parse(tokens, allow_config=False)
    ws = Workspace.resolve(opts.workspace, opts.storage, opts.tracking_uri)
    _, trial = find_trial(opts)
    job_id = trial.user_attrs.get("job_id")
    if not job_id:
        raise UserError(f"trial {trial.number} was never launched ({trial.user_attrs.get('reused_from') or trial.state.name})")
    executor = make_executor(trial.user_attrs.get("executor", "local"), {}, ws.root)
    for path in executor.log_paths(job_id):
        print(f"==> {path} <==")
        print(path.read_text(errors="replace") if path.exists() else "(not written yet)")


def cancel(tokens: list[str]) -> None:
    """`sweeper cancel study=NAME`: stop its queued and running trials; `sweeper run` resumes them later."""
    opts = parse(tokens, allow_config=False)
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
    print(f"{name}: cancelled {stopped} trial(s); `sweeper run study={name}{opts.where} ...` resumes them from their checkpoints")


def train_one(tokens: list[str], extra_tags: dict[str, str] | None = None) -> None:
    """`sweeper train key=value...`: one training run in the workspace, logged to MLflow (experiment "train");
    `extra_tags` are added to its run (`sweeper promote` links the run to its source with them)."""
    from trainer.train import train

    opts = parse(tokens)
    if opts.study or opts.trial is not None:
        raise UserError("sweeper train takes training settings (and workspace=, tracking_uri=); use `sweeper run` for studies")
    ws = Workspace.resolve(opts.workspace, opts.storage, opts.tracking_uri)
    config = check_weights(opts.config, opts.preset, opts.select_by or "psnr")
    check_data(config)
    cfg = build_config(config)
    runs = ws.root / "trials" / "train" / "run"
    number = 1 + max((int(p.name) for p in runs.glob("*") if p.name.isdigit()), default=-1)
    run_dir = ws.trial_dir("train", "run", number)
    if opts.executor == "local":
        result = train(cfg, run_dir, ws.cache_dir, progress=True)
    else:
        result = train_on_executor(opts, ws, cfg.to_dict(), TrialJob("train", "run", number, run_dir))
    if result.get("status") != "complete":
        raise UserError(f"training failed: {result.get('reason')} (folder {run_dir})")
    client = MlflowClient(ws.tracking_uri)
    experiment_id = tracking.experiment(client, "train", ws.artifacts_dir)
    tags = {"sweeper.study": "train", "sweeper.stage": "run", "sweeper.trial_number": str(number), "sweeper.preset": opts.preset,
            "sweeper.git_commit": tracking.git_commit(), **(extra_tags or {})}  # fmt: skip
    run_id = tracking.log_trial(client, experiment_id, None, run_dir, cfg.to_dict(), tags)
    print(f"\n{'set':<10}{'PSNR':>8}{'SSIM':>8}{'LPIPS':>8}")
    for set_name, m in result["final"].items():
        lp = f"{m['lpips']:.4f}" if isinstance(m.get("lpips"), (int, float)) else "n/a"
        print(f"{set_name:<10}{m['psnr']:>8.2f}{m['ssim']:>8.4f}{lp:>8}")
    print(f"\nfolder {run_dir}\nMLflow run {run_id} (experiment train): sweeper ui{opts.where}")


def train_on_executor(opts: Options, ws: Workspace, config: dict[str, Any], job: TrialJob) -> dict[str, Any]:
    """Run one training as a job of `opts.executor` (a SLURM job for `executor=slurm`), wait for it with a
    progress bar, and return its result.json; a requeued job (time limit, preemption) resumes on its own."""
    from tqdm import tqdm

    executor = make_executor(opts.executor, opts.executor_options, ws.root, opts.preset)
    if executor.name == "slurm":
        executor.check(ws.sqlite_file())
    write_text_atomic(job.trial_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    (job_id,) = executor.submit([job])
    out, err = executor.log_paths(job_id)
    print(f"submitted as {executor.name} job {job_id}; stdout {out}, stderr {err}")
    with tqdm(desc=f"{executor.name} job {job_id}", unit="it", disable=None) as bar:
        while not (job.trial_dir / "result.json").exists() and executor.state(job_id) != "ENDED":
            show(bar, read_progress(job.trial_dir))
            time.sleep(1.0)
    return read_result(job.trial_dir) or {"status": "failed", "reason": f"job {job_id} ended without result.json (see {err})"}

