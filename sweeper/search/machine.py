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

StageWork is where the states change; what it asks changes none: `sweeper.search.record` (the
stage's Optuna record), `sweeper.search.leases` (which trials this process owns), `sweeper.core.halving` (who goes
on), `sweeper.search.faults` (the machine's faults in a row), `sweeper.search.watchdog` (stalls) and
`sweeper.search.live` (the trials' MLflow runs). Opening a stage and concluding it (the winner) is
`sweeper.search.stage`; what a run works with, `sweeper.search.session`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from sweeper.core import halving
from sweeper.core.crashpoints import crash_point
from sweeper.core.identity import config_hash, trial_settings
from sweeper.core.repeats import Unit, grid_key, mean_metrics, repeat_of, unit_config
from sweeper.core.selection import rank
from sweeper.core.studies import Stage
from sweeper.core.workspace import CANCELLED, MACHINE, claim, enqueue, finish
from sweeper.search import tracking
from sweeper.search.executors import TrialJob, stop
from sweeper.search.faults import FaultStreak, failure
from sweeper.search.leases import LEASE_S, Leases
from sweeper.search.live import LiveCurves
from sweeper.search.record import LIVE_PHASES, Settled, StageRecord, phase
from sweeper.search.session import Run, copy_outcome, reusable
from sweeper.search.watchdog import FIRST_SEEN, Watchdog, count_stall, stall_of
from sweeper.search.worker import folder_busy
from trainer import ledger
from trainer.config import build_config
from trainer.files import read_json, write_json_atomic, write_text_atomic

optuna.logging.set_verbosity(optuna.logging.WARNING)


def read_result(trial_dir: Path) -> dict[str, Any] | None:
    return read_json(trial_dir / "result.json")


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
    units: list[Unit] = field(default_factory=list)  # what `poll` works on now (a racing stage adds rounds)
    record: StageRecord = field(init=False)
    leases: Leases = field(init=False)  # the RUNNING trials this process owns (`leases.mine`)
    faults: FaultStreak = field(init=False)  # the attempts ended in a row by the machine
    live: LiveCurves = field(init=False)  # the trials' MLflow runs
    dog: Watchdog = field(init=False)  # the stall clocks of the running jobs

    def __post_init__(self) -> None:
        self.record = StageRecord(self.run.storage, self.study_id)
        self.leases = Leases(self.record, self.run.owner)
        self.faults = FaultStreak(self.run.opts.max_machine_faults)
        tags = {**self.run.tags, "sweeper.stage": self.name}
        self.live = LiveCurves(self.run.client, self.run.experiment_id, self.parent, tags)
        self.dog = Watchdog(self.run.opts.stall_s)

    def poll(self, units: list[Unit], reopen: bool) -> None:
        """One round of the machine over `units` (`sweeper.search.stage.run_to_end` repeats it): they are enqueued
        (`reopen`: those that had failed too), leases renewed, orphans adopted, every trial of mine moved one step
        and free job slots filled; MachineHalt once halted by the machine's faults and none of my jobs runs."""
        self.units = units
        with self.run.ws.claim_lock():
            enqueue(self.run.storage, self.study_id, self.run.ws, self.run.study.name, self.name,
                    self.stage.grid, units, self.run.opts.max_retries, reopen)  # fmt: skip
        for number in self.leases.renew():
            self.settled(number)
        self.leases.adopt()
        self.advance()
        if self.faults.halted() and not self.leases.owned(*LIVE_PHASES):
            raise self.faults.halt()

    def advance(self) -> None:
        """Move every trial this process owns one step, then fill free job slots (promotions first, then new points)."""
        launch: list[tuple[FrozenTrial, int]] = []  # (trial, budget) to submit in one batch
        for t in self.leases.owned():
            try:
                if (budget := self.step(t)) is not None:
                    launch.append((t, budget))
            except Settled:
                self.settled(t.number)
        busy = len(self.leases.owned(*LIVE_PHASES))  # relaunches too
        free = 0 if self.faults.halted() else self.run.executor.slots() - busy
        promoted = self.promotions()[: max(free, 0)]
        launch += promoted
        free -= len(promoted)
        while free > 0:
            with self.run.ws.claim_lock():
                trial = claim(self.run.storage, self.study_id)
            if trial is None:
                break
            crash_point("claimed")
            self.leases.mine.add(trial.number)
            try:
                self.record.set_attrs(
                    trial.number, owner=self.run.owner, lease_until=time.time() + LEASE_S, phase="claimed"
                )
                if (budget := self.prepare(trial)) is not None:
                    launch.append((trial, budget))
                    free -= 1
            except Settled:
                self.settled(trial.number)
        self.launch(launch)

    def step(self, t: FrozenTrial) -> int | None:
        """One step of an owned RUNNING trial by its phase; returns the budget to (re)launch it with, if any."""
        at, attrs = phase(t), t.user_attrs
        if at == "claimed":
            return self.prepare(t)
        if at == "launching":  # killed between recording the token and the job id: the job may exist
            job_id = self.run.executor_of(t).find(attrs["launch_token"])
            if job_id is None:
                return attrs["budget"]  # never started: launch it (with a new token)
            slurm = {"slurm_job_id": job_id} if attrs.get("executor") == "slurm" else {}
            self.record.set_attrs(t.number, job_id=job_id, phase="launched", **slurm)
            return None
        if at != "launched":
            return None  # paused: `promotions` moves it
        executor = self.run.executor_of(t)
        trial_dir = self.run.ws.recorded_trial_dir(attrs["trial_dir"])
        state = executor.state(attrs["job_id"])
        if state == "RUNNING":
            self.watchdog(t, trial_dir)
        else:
            self.dog.forget(t.number)  # queued, unknown or ended: no stall clock runs
        if state != "ENDED" or folder_busy(trial_dir):
            self.live.forward(t, trial_dir)
            return None  # running (or a superseded duplicate ended while the live job still holds the folder)
        return self.job_ended(t, trial_dir)

    def job_ended(self, t: FrozenTrial, trial_dir: Path) -> int | None:
        """Read what the ended job left: a final result, a rung, an interruption, a failure, or nothing."""
        budget, result = t.user_attrs["budget"], read_result(trial_dir)
        status = (result or {}).get("status")
        if status != "complete":  # the curve up to the rung, the interruption or the failure
            self.live.forward(t, trial_dir, now=True)
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
            reason, machine = failure(result, stalled, logs_cmd)
            if result:  # keep the attempt's result; the retry resumes from the checkpoint
                os.replace(
                    trial_dir / "result.json", trial_dir / f"result.attempt-{t.user_attrs.get('attempt', 1)}.json"
                )
            if machine:
                self.machine_fault(t, reason, say=not stalled)  # a stall's one line: the progress's FAIL line
            else:
                self.fail(t, reason)
                self.faults.reasons.clear()
        return None

    # --- transitions ---

    def prepare(self, t: FrozenTrial) -> int | None:
        """A claimed trial: its config.yaml, or settled at once (a duplicate of a live point, or a reused result).
        Returns the budget to launch it with."""
        cfg = build_config(unit_config(self.config, self.stage, t.params)).to_dict()
        identity = config_hash(cfg)
        self.record.set_attrs(t.number, config_hash=identity, settings=trial_settings(cfg))
        if self.record.duplicate(t):
            self.fail(t, "duplicate grid point (enqueued twice by racing sweepers)")
            return None
        trial_dir = self.run.ws.recorded_trial_dir(t.user_attrs["trial_dir"])
        write_text_atomic(trial_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
        source = reusable(self.run, identity)
        if source is not None:
            copy_outcome(self.run.ws.recorded_trial_dir(source[1]), trial_dir)
            self.record.set_attrs(t.number, reused_from=source[0])
            result = read_result(trial_dir)
            assert result is not None, f"{source[1]} was reused without a result"
            self.complete(self.record.fetch(t.number), trial_dir, result)
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
                self.record.set_attrs(t.number, phase="launching", launch_token=token, budget=budget,
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
                self.record.set_attrs(job.number, job_id=job_id, phase="launched", **slurm)
            except Settled:
                self.settled(job.number)
            crash_point("job_recorded")

    def pause(self, t: FrozenTrial, budget: int, rung: dict[str, Any]) -> None:
        """A job ended at a rung below train.iters: report the rung's value to Optuna and wait for a promotion."""
        if (metrics := self.means(t, rung, f"at rung {budget}")) is None:
            return
        value = metrics[f"mean/{self.run.select_by}"]
        self.run.storage.set_trial_intermediate_value(self.record.trial_id(t.number), budget, value)
        crash_point("rung_reported")
        rungs = {**t.user_attrs.get("rungs", {}), str(budget): metrics}
        self.record.set_attrs(t.number, rungs=rungs, metrics=metrics, reached_iters=budget, phase="paused")
        self.faults.reasons.clear()

    def promotions(self) -> list[tuple[FrozenTrial, int]]:
        """Successive halving (`sweeper.core.halving.grid_promotions`: ASHA over the grid's points, each on the mean
        of its repeats' rung metrics): (paused trial of mine, next budget) to launch now, best first. The paused
        trials of mine that it stops (the stage is quiescent) are PRUNED with the budget they reached."""
        if len(self.budgets) == 1:
            return []
        states = (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE, TrialState.PRUNED)
        trials = {t.number: t for t in self.record.trials(*states)}
        index: dict[Hashable, int] = {grid_key(u.params): u.index for u in self.units}
        go, stopped = halving.grid_promotions(
            [self.attempt(t) for t in trials.values()],
            {(grid_key(u.params), u.repeat) for u in self.units},
            lambda point, repeats: (*rank(self.run.select_by, mean_metrics(repeats)), index[point]),
            self.run.opts.eta,
            len(self.budgets) - 1,
        )
        for number in stopped:
            if number in self.leases.mine:
                self.prune(trials[number])
        mine = [(trials[number], self.budgets[k]) for number, k in go if number in self.leases.mine]
        if mine:
            crash_point("before_promote")
        return mine

    def attempt(self, t: FrozenTrial) -> halving.Attempt:
        """A trial as successive halving sees it: its rung, whether it is paused there, the rungs it finished."""
        paused = t.state == TrialState.RUNNING and phase(t) == "paused"
        done = t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        rungs, rung = t.user_attrs.get("rungs", {}), self.budgets.index(t.user_attrs.get("budget", self.budgets[0]))
        return halving.Attempt(t.number, grid_key(t.params), repeat_of(t.params), rung,
                               "paused" if paused else "done" if done else "heading",
                               {k: rungs[str(b)] for k, b in enumerate(self.budgets[:-1]) if str(b) in rungs})  # fmt: skip

    def prune(self, t: FrozenTrial) -> None:
        """A paused trial of mine that halving stopped: logged to MLflow with the budget it reached, then PRUNED."""
        reached = t.user_attrs["reached_iters"]
        run_id = self.live.log(t, self.run.ws.recorded_trial_dir(t.user_attrs["trial_dir"]), reached)
        crash_point("before_prune")
        reason = f"stopped by successive halving at {reached} iterations"
        try:
            self.end(t.number, TrialState.PRUNED, None, {"reason": reason, "mlflow_run_id": run_id})
        except Settled:
            self.settled(t.number)

    def complete(self, t: FrozenTrial, trial_dir: Path, result: dict[str, Any]) -> None:
        """A final result: log the trial to MLflow (found by its trial key if already logged), then COMPLETE it."""
        if (metrics := self.means(t, result, "in result.json")) is None:
            return
        run_id = self.live.log(t, trial_dir)
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
        self.faults.reasons.clear()

    def means(self, t: FrozenTrial, record: dict[str, Any], where: str) -> dict[str, float] | None:
        """The mean metrics of a result or rung file (`where`); None, and the trial FAIL, without `select_by`'s."""
        metrics = tracking.final_means(record)
        if f"mean/{self.run.select_by}" in metrics:
            return metrics
        self.fail(t, f"no {self.run.select_by} {where} (select_by={self.run.select_by})")
        return None

    # --- faults of the machine (issue 19): not the trial's, no retry spent ---

    def machine_fault(self, t: FrozenTrial, reason: str, say: bool = True) -> None:
        """An attempt ended by a fault of the machine (a full or failing disk, memory, a killed or stalled job):
        FAIL with a reason starting "machine fault", not counted against max_retries; the point is enqueued
        again (the next attempt resumes from the checkpoint)."""
        self.fail(t, f"{MACHINE}: {reason}")
        crash_point("machine_fault")
        self.faults.reasons.append(reason)
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
            self.record.set_attrs(t.number, running_since=[token, time.time()])
        elif seen is not None and seen != FIRST_SEEN:
            self.record.set_attrs(t.number, stalled={"token": token, "reason": seen, "killed_at": time.time()})
            crash_point("stalled")
            self.run.executor_of(t).kill([t.user_attrs["job_id"]])

    def end(self, number: int, state: TrialState, value: float | None, attrs: dict[str, Any]) -> None:
        if not finish(self.run.storage, self.study_id, number, state, value, attrs):
            raise Settled(number)
        self.leases.mine.discard(number)
        self.live.end(number, failed=state == TrialState.FAIL)

    def fail(self, t: FrozenTrial, reason: str) -> None:
        self.end(t.number, TrialState.FAIL, None, {"reason": reason})

    def settled(self, number: int) -> None:
        """Forget a trial another process finished; say so when it was `sweeper cancel`."""
        self.leases.mine.discard(number)
        self.live.end(number)
        t = self.record.fetch(number)
        if str(t.user_attrs.get("reason", "")).startswith(CANCELLED):
            print(f"trial {number} was cancelled")

    def interrupt(self) -> None:
        """Ctrl-C: SIGTERM this process's local jobs (they checkpoint and leave "interrupted"), wait for them,
        release the trials and mark the stage run KILLED. SLURM jobs keep running; a re-run adopts them."""
        running = self.leases.owned("launching", "launched")
        executor = self.run.executors.get("local") or (self.run.executor if self.run.executor.name == "local" else None)
        local = [t for t in running if t.user_attrs.get("executor") == "local"]
        if executor is not None:  # a "launching" one may have its job already (interrupted before its id was recorded)
            jobs = [t.user_attrs["job_id"] if phase(t) == "launched" else executor.find(t.user_attrs["launch_token"])
                    for t in local]  # fmt: skip
            stop(executor, [job for job in jobs if job])
        if len(local) < len(running):
            print(f"{len(running) - len(local)} SLURM job(s) keep running; the re-run adopts them")
        self.leases.release()
        self.live.interrupt()
        tracking.end_stage_run(self.run.client, self.parent, "KILLED")
