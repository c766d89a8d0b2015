"""Trials as local processes, up to `n_jobs` at once, on GPU slots booked machine-wide (`sweeper.gpus`).

With GPUs, each worker books one of `trials_per_gpu` slots of a GPU (a flock every sweeper on the machine
sees, held for the worker's life) and sees only that GPU (a `train.devices=N` trial: one slot on each of N
GPUs, and sees those; its worker launches the N ranks with torch.distributed.run's agent, in `trainer.train`);
`n_jobs` defaults to GPUs x trials_per_gpu. On a
CPU, `n_jobs` defaults to 1. Either way each trial gets `cores // n_jobs` intra-op threads (at least 1)
unless its config sets `train.threads`: trials sharing cores with torch's default thread count each run
several times slower (issue 12).

Each trial runs `sweeper.search.worker.main([TRIAL_DIR])` in its own process and session (a crash, Ctrl-C or
kill -9 of the sweeper never takes it down), with stdout/stderr in the trial folder. Importing torch and
the trainer takes seconds, so the processes are forked from a "zygote": one helper process per sweeper
that imports them once and forks a worker per trial (the forkserver pattern; nothing touches the GPU
before the fork). A job id is the launch token; it names a small JSON record in `<workspace>/jobs/` (host,
trial folder, GPU, and the pid and process start time, which the zygote adds right after the fork), written
*before* the fork, so a sweeper killed at any moment finds the job again, a restarted sweeper re-attaches to
a job it did not start, and a recycled pid is never mistaken for the job.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from sweeper.search.executors.base import TrialJob
from sweeper.search.gpus import thread_share
from sweeper.search.worker import folder_busy
from trainer.errors import UserError
from trainer.files import read_json, write_json_atomic
from trainer.procs import process_start


def visible_gpus() -> int:
    """The GPUs this process may use. torch is asked only where a GPU driver exists (NVIDIA's control device or
    ROCm's kernel driver): importing it costs seconds that a CPU-only sweeper (which never trains) need not pay."""
    if not (Path("/dev/nvidiactl").exists() or Path("/dev/kfd").exists()):
        return 0
    import torch

    return torch.cuda.device_count()


class LocalExecutor:
    name = "local"

    def __init__(self, n_jobs: int, gpus: int, workspace: Path, trials_per_gpu: int = 1) -> None:
        self.n_jobs = n_jobs
        self.gpus = gpus
        self.trials_per_gpu = trials_per_gpu
        self.threads = thread_share(len(os.sched_getaffinity(0)), n_jobs)
        self.jobs_dir = workspace / "jobs"
        self.host = socket.gethostname()
        self._zygote: subprocess.Popen[str] | None = None

    @classmethod
    def from_options(cls, options: dict[str, Any], workspace: Path) -> LocalExecutor:
        unknown = set(options) - {"n_jobs", "trials_per_gpu"}
        if unknown:
            raise UserError(
                f"executor.{sorted(unknown)[0]} is not an option of executor=local; valid: executor.n_jobs, executor.trials_per_gpu"
            )
        for key, value in options.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"executor.{key}={value!r}: expected a positive integer")
        gpus = visible_gpus()
        per_gpu = options.get("trials_per_gpu", 1)
        return cls(options.get("n_jobs", gpus * per_gpu or 1), gpus, workspace, per_gpu)

    def slots(self) -> int:
        return self.n_jobs

    def check(self, sqlite_file: Path | None) -> None:
        """Nothing to ask ahead: the options were checked when the executor was made."""

    def submit(self, jobs: list[TrialJob]) -> list[str]:
        return [self._start(job) for job in jobs]

    def _fork(self, request: dict[str, Any]) -> int:
        if self._zygote is None or self._zygote.poll() is not None:
            self._zygote = subprocess.Popen(
                [sys.executable, "-m", "sweeper.search.executors.local"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        assert self._zygote.stdin and self._zygote.stdout
        self._zygote.stdin.write(json.dumps(request) + "\n")
        self._zygote.stdin.flush()
        reply = self._zygote.stdout.readline()
        if not reply.strip().isdigit():
            raise RuntimeError(f"the local worker launcher died (exit code {self._zygote.wait()}); its error is above")
        return int(reply)

    def _start(self, job: TrialJob) -> str:
        devices = trial_devices(job.trial_dir)
        if self.gpus and devices > self.gpus:
            raise UserError(f"train.devices={devices}: this machine has {self.gpus} GPU(s)")
        record = {"host": self.host, "pid": None, "start": None, "trial_dir": str(job.trial_dir), "token": job.token,
                  "gpus": self.gpus, "per_gpu": self.trials_per_gpu, "threads": self.threads, "devices": devices}  # fmt: skip
        path = self.jobs_dir / f"{job.token}.json"
        write_json_atomic(path, record)  # before the fork: the job can always be found by its token
        self._fork({"record": str(path), **record})  # the zygote adds pid and start to the record
        return job.token

    def find(self, token: str) -> str | None:
        record = self._record(token)
        if record is None or (record["pid"] is None and not folder_busy(Path(record["trial_dir"]))):
            return None  # never forked (killed before the zygote got the request): launch it again
        return token

    def _record(self, job_id: str) -> dict[str, Any] | None:
        return read_json(self.jobs_dir / f"{job_id}.json")

    def state(self, job_id: str) -> str:
        record = self._record(job_id)
        if record is None or record["host"] != self.host:
            return "UNKNOWN"  # another machine's process: only a sweeper there can tell
        if _alive(record):
            return "RUNNING"
        return "RUNNING" if folder_busy(Path(record["trial_dir"])) else "ENDED"

    def cancel(self, job_ids: list[str]) -> None:
        self._signal(job_ids, signal.SIGTERM)  # the worker checkpoints and ends

    def kill(self, job_ids: list[str]) -> None:
        self._signal(job_ids, signal.SIGKILL)

    def _signal(self, job_ids: list[str], sig: int) -> None:
        """Signal the process group of each live job: the worker leads its own session, with its ranks and data
        workers."""
        for job_id in job_ids:
            record = self._record(job_id)
            if record and _alive(record):
                os.killpg(record["pid"], sig)

    def log_paths(self, job_id: str) -> tuple[Path, Path]:
        record = self._record(job_id)
        if record is None:
            raise UserError(f"no record of local job {job_id} in {self.jobs_dir}")
        trial_dir = Path(record["trial_dir"])
        return trial_dir / "stdout.log", trial_dir / "stderr.log"


def trial_devices(trial_dir: Path) -> int:
    """`train.devices` of the trial's config.yaml (1 when it has none): the GPUs its worker books."""
    path = trial_dir / "config.yaml"
    return int(yaml.safe_load(path.read_text())["train"].get("devices", 1)) if path.exists() else 1


def _alive(record: dict[str, Any]) -> bool:
    """Whether the job record's process is the one running now (a recycled pid has another start time)."""
    return record["pid"] is not None and process_start(record["pid"]) == record["start"]


def zygote() -> None:
    """Import the trainer once, then for each request line (a job record plus its path) fork a worker, add its
    pid and start time to the record, and print the pid. The worker books its GPU slot itself (so the booking
    lives exactly as long as it).

    Ends when the sweeper closes the pipe (or dies); the workers it forked keep running in their own sessions.
    """
    import lpips  # noqa: F401  (imported once here rather than by every trial's first validation)
    import torch

    import trainer.train  # noqa: F401  (the point of the zygote: imported once, shared by every fork)
    from sweeper.search import gpus, worker
    from trainer import heartbeat, metrics
    from trainer.config import MetricsConfig

    # LPIPS of the default metrics.lpips_net/version built once, on the CPU, for every fork (a trial asking for
    # another builds its own). One thread: no OpenMP pool exists before a fork (it would not survive one);
    # each worker sets its own thread count. Missing or unreadable weights: each trial says so itself.
    torch.set_num_threads(1)
    with contextlib.suppress(UserError):
        metrics.lpips_model(MetricsConfig.lpips_net, MetricsConfig.lpips_version)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the sweeper's to handle
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # finished workers are reaped by the kernel
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setsid()
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                trial_dir = Path(request["trial_dir"])
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                for fd, name in ((1, "stdout.log"), (2, "stderr.log")):
                    log = os.open(trial_dir / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                    os.dup2(log, fd)
                    os.close(log)
                heartbeat.attach(trial_dir)  # a wait for a GPU slot keeps progress.json moving (no stall)
                if request["gpus"] and request.get("devices", 1) > 1:  # one training on several GPUs: one slot on each
                    ids, _bookings = gpus.book_devices(request["gpus"], request["per_gpu"], request["devices"])
                    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
                elif request["gpus"]:
                    gpu, _booking = gpus.book(
                        request["gpus"], request["per_gpu"]
                    )  # the descriptor stays open until exit
                    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
                    os.environ["GPU_SHARE"] = str(
                        1 / request["per_gpu"]
                    )  # the cost ledger's GPU-seconds: a booked share
                torch.set_num_threads(request["threads"])  # the trial's config may set train.threads instead
                code = worker.main([str(trial_dir), request["token"]])
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        record = {k: v for k, v in request.items() if k != "record"} | {"pid": pid, "start": process_start(pid) or "0"}
        write_json_atomic(Path(request["record"]), record)
        try:
            print(pid, flush=True)
        except BrokenPipeError:  # the sweeper is gone (Ctrl-C, kill): the job is findable by its record already
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return


if __name__ == "__main__":
    zygote()
