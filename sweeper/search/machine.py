"""The trial state machine: one stage's trials moved from WAITING to an end, on an executor, logged to MLflow.

One stage = one Optuna study `<study>.<stage>`; one Optuna trial = one attempt at one grid point, moved
through the states below by `StageWork` (docs/ARCHITECTURE.md, "The trial state machine", has the table of
what a crash at each arrow leaves and how a re-run repairs it):

    (none) -enqueue-> WAITING -claim-> RUNNING/claimed -token, budget.json-> launching -submit, job id->
    launched (its training-log lines forwarded to its MLflow run, live)
             -> COMPLETE (final result, logged to MLflow) | FAIL (counted; a new WAITING attempt, same folder)
             -> FAIL "machine fault: ..." (not counted; a new WAITING attempt; after max_machine_faults in a row
                no new job is launched and the run stops, saying why)
             -> launching again ("interrupted": SIGTERM, checkpointed; no retry spent)
             -> killed by the stall watchdog (no progress for executor.stall_s) -> FAIL "machine fault: stalled ..."
             -> paused at rung k (scheduler=sha) -> launching (promoted: resumes) | PRUNED (not promoted)

RUNNING trials carry `phase`, `owner` and `lease_until`; the owner renews the lease, another sweeper adopts
a trial whose lease expired or whose owner (on this host) is gone. Everything is checked before any store
is created; re-running the same command picks the study up wherever it was killed.

Opening a stage and concluding it (the winner) is `sweeper.search.stage`; what a run works with, `sweeper.search.session`.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from sweeper.core import halving
from sweeper.core.crashpoints import crash_point
from sweeper.core.identity import config_hash, trial_settings
from sweeper.core.repeats import Unit, grid_key, mean_metrics, repeat_of, unit_config
from sweeper.core.selection import rank
from sweeper.core.studies import Stage
from sweeper.core.workspace import (
    CANCELLED,
    MACHINE,
    claim,
    enqueue,
    finish,
    point_key,
    resolved,
    stage_trials,
)
from sweeper.search import tracking
from sweeper.search.executors import TrialJob
from sweeper.search.live import LiveCurves
from sweeper.search.progress import StageProgress
from sweeper.search.session import Run, copy_outcome, owner_alive, reusable
from sweeper.search.watchdog import FIRST_SEEN, Watchdog, count_stall, stall_of
from sweeper.search.worker import folder_busy
from trainer import ledger
from trainer.config import build_config
from trainer.errors import UserError
from trainer.files import file_lock, read_json, write_json_atomic, write_text_atomic

POLL_S = 0.25
LEASE_S = float(os.environ.get("SWEEPER_LEASE_S", "60"))  # a trial's owner renews its lease every LEASE_S / 3
LIVE_PHASES = ("claimed", "launching", "launched")  # RUNNING trials that hold (or are about to hold) a job slot


optuna.logging.set_verbosity(optuna.logging.WARNING)


def read_result(trial_dir: Path) -> dict[str, Any] | None:
    return read_json(trial_dir / "result.json")


class StageCancelled(UserError):
    """`sweeper cancel` was run on the stage this process works on."""


class MachineHalt(UserError):
    """`max_machine_faults` attempts in a row ended by faults of the machine: the stage stops launching and ends."""


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
    units: list[Unit] = field(default_factory=list)  # what `run_to_end` works on now (a racing stage adds rounds)
    mine: set[int] = field(default_factory=set)  # numbers of the RUNNING trials this process owns
    renewed_at: float = 0.0
    machine_faults: list[str] = field(default_factory=list)  # reasons of the attempts ended in a row by the machine
    live: LiveCurves = field(init=False)  # the trials' MLflow runs while they train
    dog: Watchdog = field(init=False)  # the stall clocks of the running jobs

    def __post_init__(self) -> None:
        self.live = LiveCurves(self.run.client, self.run.experiment_id, self.parent)
        self.dog = Watchdog(self.run.opts.stall_s)

    # --- the loop ---

    def run_to_end(self, detach: bool, units: list[Unit]) -> dict[Any, list[FrozenTrial]] | None:
        """Work the stage until every unit (grid point and repeat) asked for is resolved and return their trials
        by unit (`point_key`; None when `detach` and jobs were submitted); `sweeper.search.stage` concludes it."""
        self.units = units
        wanted = {point_key(u.params) for u in units}
        bars = StageProgress(f"{self.run.study.name}.{self.name}", len(units))
        reopen = self.run.opts.retry_failed
        try:
            while True:
                if self.run.storage.get_study_user_attrs(self.study_id).get("cancelled"):
                    raise StageCancelled(
                        f"stage {self.run.study.name}.{self.name} was cancelled (`sweeper cancel`); re-run to resume it"
                    )
                with self.run.ws.claim_lock():
                    enqueue(self.run.storage, self.study_id, self.run.ws, self.run.study.name, self.name,
                            self.stage.grid, units, self.run.opts.max_retries, reopen)  # fmt: skip
                reopen = False  # retry_failed=true re-opens the units that had failed when the run started, once
                self.renew_leases()
                self.adopt()
                self.advance()
                self.check_halt()
                groups = {k: v for k, v in stage_trials(self.run.storage, self.study_id).items() if k in wanted}
                bars.update(groups, self.run.opts.max_retries)
                if all(resolved(trials, self.run.opts.max_retries) for trials in groups.values()) and len(
                    groups
                ) >= len(wanted):
                    break
                if detach and any(
                    self.phase(t) == "launched" for t in self.trials(TrialState.RUNNING) if t.number in self.mine
                ):
                    self.release()
                    return None
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            self.interrupt()
            raise
        except BaseException as e:
            self.release()
            tracking.end_stage_run(
                self.run.client, self.parent, "KILLED" if isinstance(e, (StageCancelled, MachineHalt)) else "FAILED"
            )
            raise
        finally:
            bars.close()
        return groups

    def trials(self, *states: TrialState) -> list[FrozenTrial]:
        return self.run.storage.get_all_trials(self.study_id, deepcopy=False, states=states or None)

    @staticmethod
    def phase(t: FrozenTrial) -> str:
        return t.user_attrs.get("phase", "claimed")

    def fetch(self, number: int) -> FrozenTrial:
        return self.run.storage.get_trial(
            self.run.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        )

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
        busy = sum(
            self.phase(t) in LIVE_PHASES for t in self.trials(TrialState.RUNNING) if t.number in self.mine
        )  # relaunches too
        free = 0 if self.halted() else self.run.executor.slots() - busy
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
        trial_dir = self.run.ws.recorded_trial_dir(attrs["trial_dir"])
        state = executor.state(attrs["job_id"])
        if state == "RUNNING":
            self.watchdog(t, trial_dir)
        else:
            self.dog.forget(t.number)  # queued, unknown or ended: no stall clock runs
        if state != "ENDED" or folder_busy(trial_dir):
            self.live.forward(t.number, trial_dir, self.trial_tags(t))
            return None  # running (or a superseded duplicate ended while the live job still holds the folder)
        return self.job_ended(t, trial_dir)

    def job_ended(self, t: FrozenTrial, trial_dir: Path) -> int | None:
        """Read what the ended job left: a final result, a rung, an interruption, a failure, or nothing."""
        budget, result = t.user_attrs["budget"], read_result(trial_dir)
        status = (result or {}).get("status")
        if status != "complete":  # the curve up to the rung, the interruption or the failure
            self.live.forward(t.number, trial_dir, self.trial_tags(t), now=True)
        stalled = stall_of(t)
        if stalled:
            count_stall(t, trial_dir, stalled)
        if status == "complete" and result is not None:
            self.complete(t, trial_dir, result)
        elif status == "interrupted" and not stalled:  # SIGTERM: checkpointed; resume without spending a retry
            (trial_dir / "result.json").unlink(missing_ok=True)
            return budget
        elif budget < self.budgets[-1] and (rung := read_json(trial_dir / "rungs" / f"{budget}.json")):
            self.pause(t, budget, rung)
        else:
            logs_cmd = (
                f"sweeper logs study={self.run.study.name} stage={self.name} trial={t.number}{self.run.opts.where}"
            )
            reason = (stalled or result or {}).get("reason") or (
                f"the job ended without a result (killed: out of memory, kill -9 or a lost node; `{logs_cmd}`)"
            )
            if result:  # keep the attempt's result; the retry resumes from the checkpoint
                os.replace(
                    trial_dir / "result.json", trial_dir / f"result.attempt-{t.user_attrs.get('attempt', 1)}.json"
                )
            if result is None or result.get("fault") == "machine" or stalled:
                self.machine_fault(t, reason, say=not stalled)  # a stall's one line: the progress's FAIL line
            else:
                self.end(t.number, TrialState.FAIL, None, {"reason": reason})
                self.machine_faults.clear()
        return None

    # --- transitions ---

    def prepare(self, t: FrozenTrial) -> int | None:
        """A claimed trial: its config.yaml, or settled at once (a duplicate of a live point, or a reused result).
        Returns the budget to launch it with."""
        cfg = build_config(unit_config(self.config, self.stage, t.params)).to_dict()
        identity = config_hash(cfg)
        self.set_attrs(t.number, config_hash=identity, settings=trial_settings(cfg))
        earlier = [
            e for e in stage_trials(self.run.storage, self.study_id).get(point_key(t.params), []) if e.number < t.number
        ]
        if any(
            e.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING) for e in earlier
        ):
            self.end(
                t.number, TrialState.FAIL, None, {"reason": "duplicate grid point (enqueued twice by racing sweepers)"}
            )
            return None
        trial_dir = self.run.ws.recorded_trial_dir(t.user_attrs["trial_dir"])
        write_text_atomic(trial_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
        source = reusable(self.run, identity)
        if source is not None:
            copy_outcome(self.run.ws.recorded_trial_dir(source[1]), trial_dir)
            self.set_attrs(t.number, reused_from=source[0])
            result = read_result(trial_dir)
            assert result is not None, f"{source[1]} was reused without a result"
            self.complete(self.fetch(t.number), trial_dir, result)
            return None
        return t.user_attrs.get("budget", self.budgets[0])

    def launch(self, launches: list[tuple[FrozenTrial, int]]) -> None:
        """Submit trials in one call (one SLURM job array). Each gets a fresh launch token, written to its
        budget.json and recorded on the trial before the job exists; the job id is recorded after."""
        batch = uuid.uuid4().hex[:12]
        jobs: list[TrialJob] = []
        for t, budget in launches:
            token, trial_dir = f"{batch}.{len(jobs)}", self.run.ws.recorded_trial_dir(t.user_attrs["trial_dir"])
            result = read_result(trial_dir)
            if result and result.get("status") != "complete":
                (trial_dir / "result.json").unlink()  # an interruption's: the job resumes from the checkpoint
            write_json_atomic(trial_dir / "budget.json", {"stop_after": budget, "token": token})
            try:
                self.set_attrs(t.number, phase="launching", launch_token=token, budget=budget,
                               executor=self.run.executor.name, ledger_lines=len(ledger.read(trial_dir)))  # fmt: skip
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
            self.end(
                t.number,
                TrialState.FAIL,
                None,
                {"reason": f"no {self.run.select_by} at rung {budget} (select_by={self.run.select_by})"},
            )
            return
        trial_id = self.run.storage.get_trial_id_from_study_id_trial_number(self.study_id, t.number)
        self.run.storage.set_trial_intermediate_value(trial_id, budget, metrics[f"mean/{self.run.select_by}"])
        crash_point("rung_reported")
        rungs = {**t.user_attrs.get("rungs", {}), str(budget): metrics}
        self.set_attrs(t.number, rungs=rungs, metrics=metrics, reached_iters=budget, phase="paused")
        self.machine_faults.clear()

    def promotions(self) -> list[tuple[FrozenTrial, int]]:
        """ASHA over the grid (`sweeper.core.halving.promotions`): (paused trial of mine, next budget) to launch
        now, best first. A grid point is promoted as a whole, on the mean over its repeats of each rung metric,
        once every repeat asked for has finished the rung (all its paused repeats go on together). Once the
        stage is quiescent (no trial waiting, running or promotable), every paused trial of mine is PRUNED
        with the budget it reached."""
        if len(self.budgets) == 1:
            return []
        live = self.trials(TrialState.RUNNING, TrialState.WAITING)
        repeats = {(grid_key(u.params), u.repeat) for u in self.units}
        index = {grid_key(u.params): u.index for u in self.units}
        rung_metrics: dict[int, dict[Any, dict[int, dict[str, float]]]] = {}  # rung -> point -> repeat -> metrics
        promoted: dict[int, set[Any]] = {}
        for t in self.trials(TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE, TrialState.PRUNED):
            point, r = grid_key(t.params), repeat_of(t.params)
            if (point, r) not in repeats:
                continue
            reached = self.budgets.index(t.user_attrs.get("budget", self.budgets[0]))
            for k, budget in enumerate(self.budgets[:-1]):
                if str(budget) in t.user_attrs.get("rungs", {}):
                    rung_metrics.setdefault(k, {}).setdefault(point, {})[r] = t.user_attrs["rungs"][str(budget)]
                if reached > k:
                    promoted.setdefault(k, set()).add(point)
        asked = {p: sum(q == p for q, _ in repeats) for p in index}
        finished = {k: {p: (*rank(self.run.select_by, mean_metrics(list(by_r.values()))), index[p])
                        for p, by_r in points.items() if len(by_r) == asked[p]} for k, points in rung_metrics.items()}  # fmt: skip
        paused = [t for t in live if t.state == TrialState.RUNNING and self.phase(t) == "paused"]
        heading = [
            t for t in live if t.state == TrialState.WAITING or self.phase(t) != "paused"
        ]  # towards their budget
        open_rungs = {self.budgets.index(t.user_attrs.get("budget", self.budgets[0])) for t in heading}
        moves = halving.promotions(finished, promoted, open_rungs, self.run.opts.eta, len(self.budgets) - 1)
        going = set(moves) | {
            (p, k + 1) for k, points in promoted.items() for p in points
        }  # a point's other repeats follow
        chosen = [(t, self.budgets[k]) for p, k in going for t in paused
                  if grid_key(t.params) == p and t.user_attrs.get("budget") == self.budgets[k - 1]]  # fmt: skip
        best_first = [p for p, _ in moves]  # then the repeats left behind by an earlier promotion
        chosen.sort(
            key=lambda c: (
                best_first.index(grid_key(c[0].params)) if grid_key(c[0].params) in best_first else len(best_first)
            )
        )
        if not chosen and not open_rungs:  # quiescent: nothing can reach any rung any more
            for t in paused:
                if t.number in self.mine:
                    reached = t.user_attrs["reached_iters"]
                    run_id = self.log(t, self.run.ws.recorded_trial_dir(t.user_attrs["trial_dir"]), stopped_at=reached)
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
            self.end(
                t.number,
                TrialState.FAIL,
                None,
                {"reason": f"no {self.run.select_by} in result.json (select_by={self.run.select_by})"},
            )
            return
        run_id = self.log(t, trial_dir)
        metrics |= {
            f"{s}/{m}": v
            for s, values in result["final"].items()
            for m, v in values.items()
            if isinstance(v, (int, float))
        }
        crash_point("before_finish")
        self.end(t.number, TrialState.COMPLETE, metrics[f"mean/{self.run.select_by}"],
                 {"mlflow_run_id": run_id, "metrics": metrics, "duration_s": result.get("duration_s"), "reached_iters": result.get("iters")})  # fmt: skip
        crash_point("after_finish")
        self.machine_faults.clear()

    # --- faults of the machine (issue 19): not the trial's, no retry spent ---

    def machine_fault(self, t: FrozenTrial, reason: str, say: bool = True) -> None:
        """An attempt ended by a fault of the machine (a full or failing disk, memory, a killed or stalled job):
        FAIL with a reason starting "machine fault", not counted against max_retries; the point is enqueued
        again (the next attempt resumes from the checkpoint)."""
        self.end(t.number, TrialState.FAIL, None, {"reason": f"{MACHINE}: {reason}"})
        crash_point("machine_fault")
        self.machine_faults.append(reason)
        if say:
            print(
                f"[{self.run.study.name}.{self.name}] trial {t.number}: {MACHINE}, waiting again (no retry spent): {reason}",
                flush=True,
            )

    def watchdog(self, t: FrozenTrial, trial_dir: Path) -> None:
        """The stall watchdog's poll of a running job (`sweeper.search.watchdog`): when first seen, the time it was
        first seen running is recorded (the ledger counts a stall from there); when silent too long, the stall is
        recorded, then the job killed. Its end is then a fault of the machine (`job_ended`)."""
        token = t.user_attrs["launch_token"]
        seen = self.dog.look(t.number, token, trial_dir)
        if seen == FIRST_SEEN and (t.user_attrs.get("running_since") or [None])[0] != token:
            self.set_attrs(t.number, running_since=[token, time.time()])
        elif seen is not None and seen != FIRST_SEEN:
            self.set_attrs(t.number, stalled={"token": token, "reason": seen, "killed_at": time.time()})
            crash_point("stalled")
            self.run.executor_of(t).kill([t.user_attrs["job_id"]])

    def halted(self) -> bool:
        """Whether `max_machine_faults` attempts in a row ended by the machine's faults: no new job is launched."""
        return len(self.machine_faults) >= self.run.opts.max_machine_faults

    def check_halt(self) -> None:
        """Once halted and none of this process's jobs is running any more: stop, saying why and what to do."""
        if self.halted() and not any(
            self.phase(t) in LIVE_PHASES for t in self.trials(TrialState.RUNNING) if t.number in self.mine
        ):
            raise MachineHalt(
                f"stopped: {len(self.machine_faults)} trials in a row could not run for a fault of the "
                f"machine, not of their settings (no retry spent); the last: {self.machine_faults[-1]}. "
                "Re-run the same command to resume once it is fixed"
            )

    def trial_tags(self, t: FrozenTrial) -> dict[str, str]:
        """The tags of a trial's MLflow run that the sweeper knows (the result adds its own)."""
        attrs = t.user_attrs
        extra = {"sweeper.reused_from": attrs["reused_from"]} if "reused_from" in attrs else {}
        if "slurm_job_id" in attrs:
            extra["sweeper.slurm_job_id"] = attrs["slurm_job_id"]
        return {**self.run.tags, "sweeper.stage": self.name, "sweeper.trial_number": str(t.number),
                "sweeper.repeat": str(repeat_of(t.params)), **extra}  # fmt: skip

    def log(self, t: FrozenTrial, trial_dir: Path, stopped_at: int | None = None) -> str:
        """Log the trial to MLflow as a nested run of the stage (its live run, found by its trial key, completed)."""
        config = yaml.safe_load((trial_dir / "config.yaml").read_text())
        with file_lock(trial_dir / ".finish.lock"):  # two sweepers that adopted the trial at once log one run
            return tracking.log_trial(
                self.run.client, self.run.experiment_id, self.parent, trial_dir, config, self.trial_tags(t), stopped_at
            )

    def end(self, number: int, state: TrialState, value: float | None, attrs: dict[str, Any]) -> None:
        if not finish(self.run.storage, self.study_id, number, state, value, attrs):
            raise Settled(number)
        self.mine.discard(number)
        self.live.end(number, failed=state == TrialState.FAIL)

    def settled(self, number: int) -> None:
        """Forget a trial another process finished; say so when it was `sweeper cancel`."""
        self.mine.discard(number)
        self.live.end(number)
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
                started = t.datetime_start.timestamp() if t.datetime_start else now  # (RUNNING: always set)
                orphan = now - started > LEASE_S
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
            with contextlib.suppress(Settled):
                self.set_attrs(number, lease_until=0.0)

    def interrupt(self) -> None:
        """Ctrl-C: SIGTERM this process's local jobs (they checkpoint and leave "interrupted"), wait for them,
        release the trials and mark the stage run KILLED. SLURM jobs keep running; a re-run adopts them."""
        running = [t for t in self.trials(TrialState.RUNNING) if t.number in self.mine
                   and self.phase(t) in ("launching", "launched")]  # fmt: skip
        executor = self.run.executors.get("local") or (self.run.executor if self.run.executor.name == "local" else None)
        local = [t for t in running if t.user_attrs.get("executor") == "local"]
        jobs: list[str] = []
        if executor is not None:
            for t in local:  # a "launching" one may have its job already (interrupted before its id was recorded)
                launched = self.phase(t) == "launched"
                job = t.user_attrs["job_id"] if launched else executor.find(t.user_attrs["launch_token"])
                jobs += [job] if job else []
        if jobs and executor is not None:
            executor.cancel(jobs)
            end = time.monotonic() + 60
            while time.monotonic() < end and any(executor.state(j) == "RUNNING" for j in jobs):
                time.sleep(0.1)
        if len(local) < len(running):
            print(f"{len(running) - len(local)} SLURM job(s) keep running; the re-run adopts them")
        self.release()
        self.live.interrupt()
        tracking.end_stage_run(self.run.client, self.parent, "KILLED")
