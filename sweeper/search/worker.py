"""One trial in its own process: `python -m sweeper.search.worker TRIAL_DIR [TOKEN]`.

Takes the trial folder's lock (`TRIAL_DIR/.lock`, an exclusive flock held for the whole life of the
process), loads `config.yaml`, trains to the budget in `budget.json` (resuming from `ckpt/last.pt` when
present) and leaves `rungs/<budget>.json` (a rung of successive halving) or `result.json`. Any failure still
leaves a `result.json` with status "failed" and the reason (`"fault": "machine"` when it was the machine's:
a full or failing disk, memory; `trainer.errors.environment_fault`), so the orchestrator can tell a failed trial from
a killed one (no result at all); SIGTERM leaves one with status "interrupted" after a checkpoint.

No two live jobs ever write one trial folder: a worker that finds the lock held (a job that was started
twice, e.g. when two sweepers adopted the trial at once), or whose TOKEN is no longer the folder's launch
token, exits at once without writing anything ("superseded"); the sweeper waits for the folder to be free.
"""

from __future__ import annotations

import fcntl
import sys
import time
import traceback
from pathlib import Path
from typing import IO, Any

import yaml

from sweeper.core.crashpoints import inject_fault
from sweeper.core.workspace import workspace_of
from trainer.config import config_from_dict
from trainer.errors import environment_fault
from trainer.files import read_json, write_json_atomic

LOCK = ".lock"
LOCK_WAIT_S = 5.0  # a sweeper probing the lock (`folder_busy`) holds it for microseconds


def lock_folder(trial_dir: Path, wait_s: float = LOCK_WAIT_S) -> IO[str] | None:
    """The folder's exclusive lock (keep the returned file open to hold it), or None when another process holds it."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    f = open(trial_dir / LOCK, "a")  # noqa: SIM115 (held for the life of the process)
    end = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() > end:
                f.close()
                return None
            time.sleep(0.05)


def folder_busy(trial_dir: Path) -> bool:
    """Whether a live worker holds the trial folder's lock (a shared probe: never blocks a worker for long)."""
    try:
        with open(trial_dir / LOCK) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False


def read_budget(trial_dir: Path) -> dict[str, Any]:
    """`budget.json`: {"stop_after": GAN iterations this job trains to, "token": the launch token}; {} if absent."""
    return read_json(trial_dir / "budget.json") or {}


def run_trial(trial_dir: Path, stop_after: int | None = None) -> dict[str, Any]:
    from trainer.train import train

    trial_dir = Path(trial_dir).resolve()
    cfg = config_from_dict(yaml.safe_load((trial_dir / "config.yaml").read_text()))
    return train(cfg, trial_dir, workspace_of(trial_dir) / "cache", progress=False, stop_after=stop_after)


def run_rank(trial_dir: Path, token: str) -> int:
    """A rank other than 0 of a `train.devices=N` trial whose ranks a launcher started (SLURM tasks): it trains
    its share without the folder's lock (task 0, the worker proper, holds it and alone writes); a stale token
    ends it at once, as it ends the worker."""
    from trainer.train import stop_on_sigterm

    stop_on_sigterm()
    budget = read_budget(trial_dir)
    if budget.get("token") != token:
        print(f"superseded: another job owns {trial_dir}; exiting without writing", file=sys.stderr)
        return 0
    result = run_trial(trial_dir, budget.get("stop_after"))
    return 0 if result.get("status") in ("complete", "stopped") else 1


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: python -m sweeper.search.worker TRIAL_DIR [TOKEN]", file=sys.stderr)
        return 2
    from trainer.train import stop_on_sigterm

    stop_on_sigterm()
    trial_dir = Path(argv[0])
    lock = lock_folder(trial_dir)
    budget = read_budget(trial_dir)
    if lock is None or (len(argv) == 2 and budget.get("token") != argv[1]):
        print(f"superseded: another job owns {trial_dir}; exiting without writing", file=sys.stderr)
        return 0
    try:
        inject_fault(trial_dir)
        result = run_trial(trial_dir, budget.get("stop_after"))
    except Exception as e:  # recorded for the orchestrator, which retries or reports it
        traceback.print_exc()
        machine = environment_fault(e)  # the machine's fault: no retry is spent on it
        result = {"status": "failed", "reason": machine or f"{type(e).__name__}: {e}".splitlines()[0]}
        result |= {"fault": "machine"} if machine else {}
        if not (trial_dir / "result.json").exists():
            write_json_atomic(trial_dir / "result.json", result)
    return 0 if result.get("status") in ("complete", "stopped") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
