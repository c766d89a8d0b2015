"""`sweeper run`: a study's stages as Optuna studies, trials on an executor, results logged to MLflow.

One stage = one Optuna study `<study>.<stage>`; one Optuna trial = one attempt at one grid point, moved
through the states below by `StageWork` (docs/ARCHITECTURE.md, "The trial state machine", has the table of
what a crash at each arrow leaves and how a re-run repairs it):

    (none) -enqueue-> WAITING -claim-> RUNNING/claimed -token, budget.json-> launching -submit, job id->
    launched -> COMPLETE (final result, logged to MLflow) | FAIL (counted; a new WAITING attempt, same folder)
             -> launching again ("interrupted": SIGTERM, checkpointed; no retry spent)
             -> paused at rung k (scheduler=sha) -> launching (promoted: resumes) | PRUNED (not promoted)

RUNNING trials carry `phase`, `owner` and `lease_until`; the owner renews the lease, another sweeper adopts
a trial whose lease expired or whose owner (on this host) is gone. Everything is checked before any store
is created; re-running the same command picks the study up wherever it was killed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from mlflow import MlflowClient
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from sweeper import halving, tracking
from sweeper.crashpoints import crash_point
from sweeper.executors import Executor, TrialJob, make_executor
from sweeper.executors.local import process_start
from sweeper.overrides import Options, parse, require_study
from sweeper.progress import StageProgress, read_progress, show, trial_states
from sweeper.selection import HIGHER_IS_BETTER, TIE_BREAK, signed
from sweeper.studies import Stage, Study, label, load
from sweeper.worker import folder_busy
from sweeper.workspace import CANCELLED, Workspace, claim, enqueue, finish, point_key, resolved, stage_trials
from trainer.config import NOT_COMPUTATION, build_config, flatten, parse_value
from trainer.errors import UserError
from trainer.files import file_lock, read_json, write_bytes_atomic, write_json_atomic, write_text_atomic

POLL_S = 0.25
LEASE_S = float(os.environ.get("SWEEPER_LEASE_S", "60"))  # a trial's owner renews its lease every LEASE_S / 3
BOOKKEEPING = NOT_COMPUTATION | {"train.log_every", "train.ckpt_every"}  # not part of a trial's identity
SETTINGS_KEYS = ("mu", "beta", "arch", "loss.perceptual")
LIVE_PHASES = ("claimed", "launching", "launched")  # RUNNING trials that hold (or are about to hold) a job slot

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


def trial_settings(config: dict[str, Any]) -> dict[str, str]:
    """The settings a reader compares trials by, as labels (mu=inf as "inf"): the `settings` trial attr."""
    f = flatten(config)
    return {k: label(f[k]) for k in SETTINGS_KEYS}


def rank(select_by: str, metrics: dict[str, float]) -> tuple[float, float]:
    """Sort key of a trial's mean metrics, best first: the selection metric, then its tie-break metric."""
    tie = TIE_BREAK[select_by]
    return signed(select_by, metrics.get(f"mean/{select_by}")), signed(tie, metrics.get(f"mean/{tie}"))


def read_result(trial_dir: Path) -> dict[str, Any] | None:
    return read_json(trial_dir / "result.json")


# --- Checks before anything is created --------------------------------------------------------------


def default_select_by(opts: Options) -> str:
    """`select_by=`, else the preset's: psnr for preset=smoke (said once), lpips (the paper's) otherwise."""
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
    executor: Executor  # starts new jobs
    storage: BaseStorage
    client: MlflowClient
    experiment_id: str
    tags: dict[str, str]  # common tags of stage and trial runs
    owner: str  # this process, as recorded on the trials it runs
    executors: dict[str, Executor] = field(default_factory=dict)  # by name: each trial is watched by the one that started it

    def executor_of(self, trial: FrozenTrial) -> Executor:
        name = trial.user_attrs.get("executor", self.executor.name)
        if name not in self.executors:
            self.executors[name] = self.executor if name == self.executor.name else make_executor(name, {}, self.ws.root)
        return self.executors[name]


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{process_start(os.getpid())}"


def owner_alive(owner: str) -> bool | None:
    """Whether the sweeper process that owns a trial still runs; None when it is on another machine (its lease tells)."""
    host, pid, start = owner.rsplit(":", 2)
    return None if host != socket.gethostname() else process_start(int(pid)) == start


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


def stage_budgets(opts: Options, iters: int, n_points: int) -> list[int]:
    """The GAN-iteration budget of each rung: [train.iters] without a scheduler, successive halving's rungs with scheduler=sha."""
    if opts.scheduler == "none":
        return [iters]
    try:
        return halving.rung_budgets(iters, n_points, opts.eta, opts.min_iters)
    except ValueError as e:
        raise UserError(str(e)) from None


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
    select_by = default_select_by(opts)
    config = check_weights(base_config(study, opts, ws), opts.preset, select_by)
    for stage in study.stages:  # every trial config and rung budget valid before anything is created
        for point in stage.points():
            stage_budgets(opts, build_config({**config, **stage.overrides(point)}).train.iters, len(stage.points()))
    check_data(config)

    ws.root.mkdir(parents=True, exist_ok=True)
    tags = {"sweeper.study": study.name, "sweeper.preset": opts.preset, "sweeper.select_by": select_by,
            "sweeper.weights": str(config.get("weights", "imagenet")), "sweeper.git_commit": tracking.git_commit()}  # fmt: skip
    with file_lock(ws.root / "setup.lock"):  # sweepers started together: one creates the stores and the experiment
        ws.create_stores()
        client = MlflowClient(ws.tracking_uri)
        run = Run(study, opts, ws, select_by, executor, ws.open_storage(), client,
                  tracking.experiment(client, study.name, ws.artifacts_dir), tags, owner_id())  # fmt: skip
    fixed: dict[str, Any] = {}
    previous = None
    before = trial_states(run.storage, study.name)
    for r in range(1, rounds + 1):
        for stage in study.stages:
            work = StageWork.open(run, stage, stage.name if r == 1 else f"{stage.name}_r{r}", {**config, **fixed})
            winner = work.run_to_end(detach)
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


class StageCancelled(UserError):
    """`sweeper cancel` was run on the stage this process works on."""


class Settled(Exception):
    """The trial was finished by another process (`sweeper cancel`, or a sweeper that adopted it) meanwhile."""


@dataclass
class StageWork:
    """One stage being worked on by this process: the trial state machine of the module docstring."""

    run: Run
    name: str  # stage name in the workspace (`mu`, `beta_r2`, ...)
    stage: Stage
    config: dict[str, Any]
    study_id: int
    parent: str  # the stage's MLflow run
    budgets: list[int]  # GAN iterations of each rung; the last is train.iters
    mine: set[int] = field(default_factory=set)  # numbers of the RUNNING trials this process owns
    renewed_at: float = 0.0

    @classmethod
    def open(cls, run: Run, stage: Stage, name: str, config: dict[str, Any]) -> StageWork:
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
        return cls(run, name, stage, config, study_id, parent, budgets)

    # --- the loop ---

    def run_to_end(self, detach: bool) -> dict[str, str] | None:
        """Work the stage to its end and return its winner (None when `detach` and jobs were submitted)."""
        points = self.stage.points()
        bars = StageProgress(f"{self.run.study.name}.{self.name}", len(points))
        try:
            while True:
                if self.run.storage.get_study_user_attrs(self.study_id).get("cancelled"):
                    raise StageCancelled(f"stage {self.run.study.name}.{self.name} was cancelled (`sweeper cancel`); re-run to resume it")
                with self.run.ws.claim_lock():
                    enqueue(self.run.storage, self.study_id, self.run.ws, self.run.study.name, self.name,
                            self.stage.grid, points, self.run.opts.max_retries)  # fmt: skip
                self.renew_leases()
                self.adopt()
                self.advance()
                groups = stage_trials(self.run.storage, self.study_id)
                bars.update(groups, self.run.opts.max_retries)
                if all(resolved(trials, self.run.opts.max_retries) for trials in groups.values()) and len(groups) >= len(points):
                    break
                if detach and any(self.phase(t) == "launched" for t in self.trials(TrialState.RUNNING) if t.number in self.mine):
                    self.release()
                    return None
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            self.interrupt()
            raise
        except BaseException as e:
            self.release()
            tracking.end_stage_run(self.run.client, self.parent, "KILLED" if isinstance(e, StageCancelled) else "FAILED")
            raise
        finally:
            bars.close()
        return self.conclude(groups)

    def trials(self, *states: TrialState) -> list[FrozenTrial]:
        return self.run.storage.get_all_trials(self.study_id, deepcopy=False, states=states or None)

    @staticmethod
    def phase(t: FrozenTrial) -> str:
        return t.user_attrs.get("phase", "claimed")

    def fetch(self, number: int) -> FrozenTrial:
        return self.run.storage.get_trial(self.run.storage.get_trial_id_from_study_id_trial_number(self.study_id, number))

    def set_attrs(self, number: int, **attrs: Any) -> None:
        """Write user attrs of a RUNNING trial; Settled when another process finished it meanwhile."""
        trial_id = self.run.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        try:
            for key, value in attrs.items():
                self.run.storage.set_trial_user_attr(trial_id, key, value)
        except UpdateFinishedTrialError:
            raise Settled(number) from None

    def advance(self) -> None:
        """Move every trial this process owns one step, then fill free job slots (promotions first, then new points)."""
        launch: list[tuple[FrozenTrial, int]] = []  # (trial, budget) to submit in one batch
        for t in self.trials(TrialState.RUNNING):
            if t.number not in self.mine:
                continue
            try:
                if (budget := self.step(t)) is not None:
                    launch.append((t, budget))
            except Settled:
                self.settled(t.number)
        busy = sum(self.phase(t) in LIVE_PHASES for t in self.trials(TrialState.RUNNING) if t.number in self.mine)  # relaunches too
        free = self.run.executor.slots() - busy
        promoted = self.promotions()[: max(free, 0)]
        launch += promoted
        free -= len(promoted)
        while free > 0:
            with self.run.ws.claim_lock():
                trial = claim(self.run.storage, self.study_id)
            if trial is None:
                break
            crash_point("claimed")
            self.mine.add(trial.number)
            try:
                self.set_attrs(trial.number, owner=self.run.owner, lease_until=time.time() + LEASE_S, phase="claimed")
                if (budget := self.prepare(trial)) is not None:
                    launch.append((trial, budget))
                    free -= 1
            except Settled:
                self.settled(trial.number)
        self.launch(launch)

    def step(self, t: FrozenTrial) -> int | None:
        """One step of an owned RUNNING trial by its phase; returns the budget to (re)launch it with, if any."""
        phase, attrs = self.phase(t), t.user_attrs
        if phase == "claimed":
            return self.prepare(t)
        if phase == "launching":  # killed between recording the token and the job id: the job may exist
            job_id = self.run.executor_of(t).find(attrs["launch_token"])
            if job_id is None:
                return attrs["budget"]  # never started: launch it (with a new token)
            slurm = {"slurm_job_id": job_id} if attrs.get("executor") == "slurm" else {}
            self.set_attrs(t.number, job_id=job_id, phase="launched", **slurm)
            return None
        if phase != "launched":
            return None  # paused: `promotions` moves it
        executor = self.run.executor_of(t)
        trial_dir = Path(attrs["trial_dir"])
        if executor.state(attrs["job_id"]) != "ENDED" or folder_busy(trial_dir):
            return None  # running (or a superseded duplicate ended while the live job still holds the folder)
        return self.job_ended(t, trial_dir)

    def job_ended(self, t: FrozenTrial, trial_dir: Path) -> int | None:
        """Read what the ended job left: a final result, a rung, an interruption, a failure, or nothing."""
        budget, result = t.user_attrs["budget"], read_result(trial_dir)
        status = (result or {}).get("status")
        if status == "complete":
            self.complete(t, trial_dir, result)
        elif status == "interrupted":  # SIGTERM: checkpointed; resume without spending a retry
            (trial_dir / "result.json").unlink(missing_ok=True)
            return budget
        elif budget < self.budgets[-1] and (rung := read_json(trial_dir / "rungs" / f"{budget}.json")):
            self.pause(t, budget, rung)
        else:
            logs_cmd = f"sweeper logs study={self.run.study.name} stage={self.name} trial={t.number}{self.run.opts.where}"
            reason = (result or {}).get("reason") or f"the job ended without a result (killed or crashed: `{logs_cmd}`)"
            if result:  # keep the attempt's result; the retry resumes from the checkpoint
                os.replace(trial_dir / "result.json", trial_dir / f"result.attempt-{t.user_attrs.get('attempt', 1)}.json")
            self.end(t.number, TrialState.FAIL, None, {"reason": reason})
        return None

    # --- transitions ---

    def prepare(self, t: FrozenTrial) -> int | None:
        """A claimed trial: its config.yaml, or settled at once (a duplicate of a live point, or a reused result).
        Returns the budget to launch it with."""
        cfg = build_config({**self.config, **self.stage.overrides(t.params)}).to_dict()
        identity = config_hash(cfg)
        self.set_attrs(t.number, config_hash=identity, settings=trial_settings(cfg))
        earlier = [e for e in stage_trials(self.run.storage, self.study_id).get(point_key(t.params), []) if e.number < t.number]
        if any(e.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING) for e in earlier):
            self.end(t.number, TrialState.FAIL, None, {"reason": "duplicate grid point (enqueued twice by racing sweepers)"})
            return None
        trial_dir = Path(t.user_attrs["trial_dir"])
        write_text_atomic(trial_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
        source = reusable(self.run, identity)
        if source is not None:
            copy_outcome(Path(source[1]), trial_dir)
            self.set_attrs(t.number, reused_from=source[0])
            self.complete(self.fetch(t.number), trial_dir, read_result(trial_dir))
            return None
        return t.user_attrs.get("budget", self.budgets[0])

    def launch(self, launches: list[tuple[FrozenTrial, int]]) -> None:
        """Submit trials in one call (one SLURM job array). Each gets a fresh launch token, written to its
        budget.json and recorded on the trial before the job exists; the job id is recorded after."""
        batch, jobs = uuid.uuid4().hex[:12], []
        for t, budget in launches:
            token, trial_dir = f"{batch}.{len(jobs)}", Path(t.user_attrs["trial_dir"])
            result = read_result(trial_dir)
            if result and result.get("status") != "complete":
                (trial_dir / "result.json").unlink()  # an interruption's: the job resumes from the checkpoint
            write_json_atomic(trial_dir / "budget.json", {"stop_after": budget, "token": token})
            try:
                self.set_attrs(t.number, phase="launching", launch_token=token, budget=budget, executor=self.run.executor.name)
            except Settled:
                self.settled(t.number)
                continue
            crash_point("launching")
            jobs.append(TrialJob(self.run.study.name, self.name, t.number, trial_dir, token))
        if not jobs:
            return
        job_ids = self.run.executor.submit(jobs)
        crash_point("submitted")
        for job, job_id in zip(jobs, job_ids, strict=True):
            slurm = {"slurm_job_id": job_id} if self.run.executor.name == "slurm" else {}
            try:
                self.set_attrs(job.number, job_id=job_id, phase="launched", **slurm)
            except Settled:
                self.settled(job.number)
            crash_point("job_recorded")

    def pause(self, t: FrozenTrial, budget: int, rung: dict[str, Any]) -> None:
        """A job ended at a rung below train.iters: report the rung's value to Optuna and wait for a promotion."""
        metrics = tracking.final_means(rung)
        if f"mean/{self.run.select_by}" not in metrics:
            self.end(t.number, TrialState.FAIL, None, {"reason": f"no {self.run.select_by} at rung {budget} (select_by={self.run.select_by})"})
            return
        trial_id = self.run.storage.get_trial_id_from_study_id_trial_number(self.study_id, t.number)
        self.run.storage.set_trial_intermediate_value(trial_id, budget, metrics[f"mean/{self.run.select_by}"])
        crash_point("rung_reported")
        rungs = {**t.user_attrs.get("rungs", {}), str(budget): metrics}
        self.set_attrs(t.number, rungs=rungs, metrics=metrics, reached_iters=budget, phase="paused")

    def promotions(self) -> list[tuple[FrozenTrial, int]]:
        """ASHA over the grid (`sweeper.halving.promotions`): (paused trial of mine, next budget) to launch
        now, best first. Once the stage is quiescent (no trial waiting, running or promotable), every paused
        trial of mine is PRUNED with the budget it reached."""
        if len(self.budgets) == 1:
            return []
        live = self.trials(TrialState.RUNNING, TrialState.WAITING)
        index = {point_key(p): i for i, p in enumerate(self.stage.points())}
        finished: dict[int, dict[int, tuple]] = {}
        promoted: dict[int, set[int]] = {}
        for t in self.trials(TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE, TrialState.PRUNED):
            i, reached = index[point_key(t.params)], self.budgets.index(t.user_attrs.get("budget", self.budgets[0]))
            for k, budget in enumerate(self.budgets[:-1]):
                if str(budget) in t.user_attrs.get("rungs", {}):
                    finished.setdefault(k, {})[i] = (*rank(self.run.select_by, t.user_attrs["rungs"][str(budget)]), i)
                if reached > k:
                    promoted.setdefault(k, set()).add(i)
        paused = {index[point_key(t.params)]: t for t in live if t.state == TrialState.RUNNING and self.phase(t) == "paused"}
        heading = [t for t in live if t.state == TrialState.WAITING or self.phase(t) != "paused"]  # towards their budget
        open_rungs = {self.budgets.index(t.user_attrs.get("budget", self.budgets[0])) for t in heading}
        moves = halving.promotions(finished, promoted, open_rungs, self.run.opts.eta, len(self.budgets) - 1)
        chosen = [(paused[i], self.budgets[k]) for i, k in moves if i in paused]
        if not moves and not open_rungs:  # quiescent: nothing can reach any rung any more
            for t in paused.values():
                if t.number in self.mine:
                    reached = t.user_attrs["reached_iters"]
                    run_id = self.log(t, Path(t.user_attrs["trial_dir"]), stopped_at=reached)
                    crash_point("before_prune")
                    reason = f"stopped by successive halving at {reached} iterations"
                    try:
                        self.end(t.number, TrialState.PRUNED, None, {"reason": reason, "mlflow_run_id": run_id})
                    except Settled:
                        self.settled(t.number)
        mine = [(t, b) for t, b in chosen if t.number in self.mine]
        if mine:
            crash_point("before_promote")
        return mine

    def complete(self, t: FrozenTrial, trial_dir: Path, result: dict[str, Any]) -> None:
        """A final result: log the trial to MLflow (found by its trial key if already logged), then COMPLETE it."""
        metrics = tracking.final_means(result)
        if f"mean/{self.run.select_by}" not in metrics:
            self.end(t.number, TrialState.FAIL, None, {"reason": f"no {self.run.select_by} in result.json (select_by={self.run.select_by})"})
            return
        run_id = self.log(t, trial_dir)
        metrics |= {f"{s}/{m}": v for s, values in result["final"].items() for m, v in values.items() if isinstance(v, (int, float))}
        crash_point("before_finish")
        self.end(t.number, TrialState.COMPLETE, metrics[f"mean/{self.run.select_by}"],
                 {"mlflow_run_id": run_id, "metrics": metrics, "duration_s": result.get("duration_s"), "reached_iters": result.get("iters")})  # fmt: skip
        crash_point("after_finish")

    def log(self, t: FrozenTrial, trial_dir: Path, stopped_at: int | None = None) -> str:
        """Log the trial to MLflow as a nested run of the stage (found by its trial key if already logged)."""
        attrs = t.user_attrs
        config = yaml.safe_load((trial_dir / "config.yaml").read_text())
        extra = {"sweeper.reused_from": attrs["reused_from"]} if "reused_from" in attrs else {}
        if "slurm_job_id" in attrs:
            extra["sweeper.slurm_job_id"] = attrs["slurm_job_id"]
        tags = {**self.run.tags, "sweeper.stage": self.name, "sweeper.trial_number": str(t.number), **extra}
        with file_lock(trial_dir / ".finish.lock"):  # two sweepers that adopted the trial at once log one run
            return tracking.log_trial(self.run.client, self.run.experiment_id, self.parent, trial_dir, config, tags, stopped_at)

    def end(self, number: int, state: TrialState, value: float | None, attrs: dict[str, Any]) -> None:
        if not finish(self.run.storage, self.study_id, number, state, value, attrs):
            raise Settled(number)
        self.mine.discard(number)

    def settled(self, number: int) -> None:
        """Forget a trial another process finished; say so when it was `sweeper cancel`."""
        self.mine.discard(number)
        t = self.fetch(number)
        if str(t.user_attrs.get("reason", "")).startswith(CANCELLED):
            print(f"trial {number} was cancelled")

    # --- ownership ---

    def renew_leases(self) -> None:
        if time.monotonic() - self.renewed_at < LEASE_S / 3:
            return
        self.renewed_at = time.monotonic()
        for number in list(self.mine):
            try:
                self.set_attrs(number, lease_until=time.time() + LEASE_S)
            except Settled:
                self.settled(number)

    def adopt(self) -> None:
        """Take over RUNNING trials whose owner is gone (on this host) or whose lease expired (any host)."""
        now = time.time()
        for t in self.trials(TrialState.RUNNING):
            owner, lease = t.user_attrs.get("owner"), t.user_attrs.get("lease_until")
            if t.number in self.mine:
                continue
            if owner is None:  # claimed, killed before the owner was recorded
                orphan = now - t.datetime_start.timestamp() > LEASE_S
            else:
                orphan = owner_alive(owner) is False or (lease is not None and lease < now)
            if orphan:
                try:
                    self.set_attrs(t.number, owner=self.run.owner, lease_until=now + LEASE_S)
                except Settled:
                    continue
                self.mine.add(t.number)

    def release(self) -> None:
        """Let another sweeper adopt this process's trials at once (their jobs, if any, keep running)."""
        for number in list(self.mine):
            try:
                self.set_attrs(number, lease_until=0.0)
            except Settled:
                pass

    def interrupt(self) -> None:
        """Ctrl-C: SIGTERM this process's local jobs (they checkpoint and leave "interrupted"), wait for them,
        release the trials and mark the stage run KILLED. SLURM jobs keep running; a re-run adopts them."""
        running = [t for t in self.trials(TrialState.RUNNING) if t.number in self.mine and self.phase(t) == "launched"]
        local = [t.user_attrs["job_id"] for t in running if t.user_attrs.get("executor") == "local"]
        executor = self.run.executors.get("local") or (self.run.executor if self.run.executor.name == "local" else None)
        if local and executor is not None:
            executor.cancel(local)
            end = time.monotonic() + 60
            while time.monotonic() < end and any(executor.state(j) == "RUNNING" for j in local):
                time.sleep(0.1)
        if len(local) < len(running):
            print(f"{len(running) - len(local)} SLURM job(s) keep running; the re-run adopts them")
        self.release()
        tracking.end_stage_run(self.run.client, self.parent, "KILLED")

    # --- the end ---

    def conclude(self, groups: dict[Any, list[FrozenTrial]]) -> dict[str, str]:
        """Pick the winner among the COMPLETE trials and record it in Optuna and MLflow (idempotent: a re-run
        recomputes it, and may change it); log the stage's table and plot."""
        done = [t for trials in groups.values() for t in trials if t.state == TrialState.COMPLETE]
        failed = [trials[-1] for trials in groups.values() if not any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)]
        for t in failed:
            print(f"warning: {self.run.study.name}.{self.name} trial {t.number} {t.params} failed: {t.user_attrs.get('reason')}")
        if not done:
            tracking.end_stage_run(self.run.client, self.parent, "FAILED")
            raise UserError(f"stage {self.run.study.name}.{self.name}: every trial failed; see `sweeper status study={self.run.study.name}{self.run.opts.where}`")
        best = min(done, key=lambda t: (*rank(self.run.select_by, t.user_attrs["metrics"]), t.number))
        winner = best.user_attrs["settings"]
        with file_lock(self.run.ws.root / "setup.lock"):  # two sweepers concluding at once: MLflow's tag inserts race
            crash_point("before_winner")
            self.run.storage.set_study_user_attr(self.study_id, "winner", winner)
            self.run.storage.set_study_user_attr(self.study_id, "winner_trial", best.number)
            self.run.storage.set_study_user_attr(self.study_id, "finished_at", time.time())
            crash_point("after_winner")
            tracking.finish_stage(self.run.client, self.run.study.name, self.name, self.parent, best.user_attrs["mlflow_run_id"], winner)
        score = best.user_attrs["metrics"][f"mean/{self.run.select_by}"]
        print(f"stage {self.name}: winner trial {best.number} ({', '.join(f'{k}={v}' for k, v in winner.items())}), mean {self.run.select_by} {score:.4f}")
        return winner


def reusable(run: Run, identity: str) -> tuple[str, str] | None:
    """("<study>.<stage>#<n>", trial folder) of a complete trial anywhere in the workspace with this config hash."""
    for s in run.storage.get_all_studies():
        study_id = run.storage.get_study_id_from_name(s.study_name)
        for t in run.storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.user_attrs.get("config_hash") == identity and "reused_from" not in t.user_attrs:
                return f"{s.study_name}#{t.number}", t.user_attrs["trial_dir"]
    return None


def copy_outcome(source: Path, trial_dir: Path) -> None:
    """Give a reused trial its own folder: the source's metrics and samples, then (atomically, last) its
    result.json, beside the trial's own config.yaml (which records this grid point's settings)."""
    if (source / "samples").is_dir():
        shutil.copytree(source / "samples", trial_dir / "samples", dirs_exist_ok=True)
    if (source / "metrics.jsonl").exists():
        shutil.copyfile(source / "metrics.jsonl", trial_dir / "metrics.jsonl")
    write_bytes_atomic(trial_dir / "result.json", (source / "result.json").read_bytes())


# --- `sweeper train`: one run outside a study -------------------------------------------------------------


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
        result = train_on_executor(opts, ws, cfg.to_dict(), TrialJob("train", "run", number, run_dir, f"{uuid.uuid4().hex[:12]}.0"))
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
    write_json_atomic(job.trial_dir / "budget.json", {"stop_after": None, "token": job.token})
    (job_id,) = executor.submit([job])
    out, err = executor.log_paths(job_id)
    print(f"submitted as {executor.name} job {job_id}; stdout {out}, stderr {err}")
    with tqdm(desc=f"{executor.name} job {job_id}", unit="it", disable=None) as bar:
        while not (job.trial_dir / "result.json").exists() and executor.state(job_id) != "ENDED":
            show(bar, read_progress(job.trial_dir))
            time.sleep(1.0)
    return read_result(job.trial_dir) or {"status": "failed", "reason": f"job {job_id} ended without result.json (see {err})"}

