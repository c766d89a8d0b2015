"""Trials as local processes: `python -m sweeper.worker TRIAL_DIR`, up to `n_jobs` at once, one GPU each.

A job id names a small JSON record in `<workspace>/jobs/` (host, pid, process start time, GPU, trial
folder), so a restarted orchestrator can re-attach to a job it did not start, and a recycled pid is never
mistaken for the job.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from sweeper.executors.base import TrialJob
from trainer.checkpoint import write_json_atomic
from trainer.errors import UserError


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def process_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in "ZX" else fields[19]


class LocalExecutor:
    name = "local"

    def __init__(self, n_jobs: int, gpus: int, workspace: Path) -> None:
        self.n_jobs = n_jobs
        self.gpus = gpus
        self.jobs_dir = workspace / "jobs"
        self.host = socket.gethostname()
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    @classmethod
    def from_options(cls, options: dict[str, Any], workspace: Path) -> LocalExecutor:
        unknown = set(options) - {"n_jobs"}
        if unknown:
            raise UserError(f"executor.{sorted(unknown)[0]} is not an option of executor=local; valid: executor.n_jobs")
        gpus = visible_gpus()
        n_jobs = options.get("n_jobs", max(gpus, 1))
        if not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs < 1:
            raise UserError(f"executor.n_jobs={n_jobs!r}: expected a positive integer")
        return cls(n_jobs, gpus, workspace)

    def slots(self) -> int:
        return self.n_jobs

    def submit(self, jobs: list[TrialJob]) -> list[str]:
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        return [self._start(job) for job in jobs]

    def _start(self, job: TrialJob) -> str:
        env = dict(os.environ)
        gpu = self._free_gpu() if self.gpus > 1 else None
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        stdout, stderr = job.trial_dir / "stdout.log", job.trial_dir / "stderr.log"
        with stdout.open("ab") as out, stderr.open("ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sweeper.worker", str(job.trial_dir)],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,  # survives Ctrl-C and kill -9 of the orchestrator: re-attach later
            )  # fmt: skip
        start = process_start(proc.pid) or "0"
        job_id = f"{self.host}.{proc.pid}.{start}"
        record = {"host": self.host, "pid": proc.pid, "start": start, "gpu": gpu, "trial_dir": str(job.trial_dir)}
        write_json_atomic(self.jobs_dir / f"{job_id}.json", record)
        self._children[job_id] = proc
        return job_id

    def _record(self, job_id: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.jobs_dir / f"{job_id}.json").read_text())
        except (OSError, ValueError):
            return None

    def _free_gpu(self) -> int:
        busy = {self._record(job_id)["gpu"] for job_id, proc in self._children.items() if proc.poll() is None}
        return min(set(range(self.gpus)) - busy, default=0)

    def state(self, job_id: str) -> str:
        if job_id in self._children:
            return "RUNNING" if self._children[job_id].poll() is None else "ENDED"
        record = self._record(job_id)
        if record is None or record["host"] != self.host:
            return "UNKNOWN"  # another machine's process: only its own orchestrator can tell
        return "RUNNING" if process_start(record["pid"]) == record["start"] else "ENDED"

    def cancel(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            record = self._record(job_id)
            if record and self.state(job_id) == "RUNNING":
                os.killpg(record["pid"], signal.SIGTERM)  # the worker leads its own session
            if job_id in self._children:
                self._children.pop(job_id).wait()

    def log_paths(self, job_id: str) -> tuple[Path, Path]:
        record = self._record(job_id)
        if record is None:
            raise UserError(f"no record of local job {job_id} in {self.jobs_dir}")
        trial_dir = Path(record["trial_dir"])
        return trial_dir / "stdout.log", trial_dir / "stderr.log"
