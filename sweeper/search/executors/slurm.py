"""Trials as SLURM jobs through submitit: one job array per submission, requeued on timeout or preemption.

The array is named `sweeper-<batch>` after the launch tokens of its jobs (`<batch>.<index>`, index = array
task), so a sweeper killed between sbatch and recording the job ids finds the tasks with `squeue --name`.
Each array task runs `TrialTask(trial_dir, token)`, a `submitit.helpers.Checkpointable`: when SLURM signals the
end of the time limit (or a preemption), submitit requeues the same call, and `sweeper.search.worker.run_trial`
resumes from the trial's `ckpt/last.pt` (lost work: at most one `train.ckpt_every`). Job folders
(`<workspace>/slurm/<job id>/`: pickles, stdout, stderr) must be on a filesystem the nodes share, like
the trial folders.

A trial with `train.devices=N` (one training on N ranks, `trainer.distributed`) is one job of N tasks
(`executor.nodes` nodes, N / nodes tasks and, where the preset asks for GPUs, as many GPUs per node): every
task exports the env:// variables of `submitit.helpers.TorchDistributedEnvironment` and trains as one rank;
task 0 is the trial's worker (folder lock, token, result.json), the others are bare ranks. A rank that
dies fails the job (the trial is retried from its checkpoint); a time limit or preemption requeues the whole
job (submitit requeues from task 0), which resumes from the checkpoint without spending a retry.

`executor.trials_per_gpu=N` packs N trials on a GPU with SLURM's GPU sharding (`--gres=shard`): each trial
stays one job (one job id, one requeue, one result per trial), and each requests 1/N of a GPU's shards;
the cluster must configure shards (docs/CLUSTER.md explains the choice and the set-up).

Job state comes from `squeue` (this works without SLURM accounting, where submitit's `sacct` fails);
when the controller cannot be asked, submitit's result file says whether the job ended. See docs/CLUSTER.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import submitit

from sweeper.core.workspace import private_dir
from sweeper.search.executors.base import TrialJob
from trainer.errors import UserError

# Sensible defaults per preset; every one can be overridden by `executor.<key>=value`.
PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    "smoke": {"cpus_per_task": 1, "gpus_per_node": 0, "mem_gb": 4, "timeout_min": 30},
    "proxy": {"cpus_per_task": 8, "gpus_per_node": 1, "mem_gb": 32, "timeout_min": 24 * 60},
    "paper": {"cpus_per_task": 8, "gpus_per_node": 1, "mem_gb": 64, "timeout_min": 48 * 60},
}
# option -> (type, meaning) for validation and error messages
OPTIONS: dict[str, tuple[type, str]] = {
    "partition": (str, "partition name"),
    "gpus_per_node": (int, "GPUs per job (0 = none)"),
    "cpus_per_task": (int, "CPU cores per job"),
    "mem_gb": (float, "memory per job in GB"),
    "timeout_min": (int, "time limit per allocation in minutes; the job is requeued when it is reached"),
    "array_parallelism": (int, "most array tasks running at once"),
    "account": (str, "account to charge"),
    "qos": (str, "quality of service"),
    "constraint": (str, "node features, e.g. a100"),
    "additional_parameters": (dict, "extra sbatch flags, e.g. {mail-type: END}"),
    "max_requeues": (int, "how often a job may be requeued after its time limit"),
    "signal_delay_s": (int, "seconds before the time limit at which the job checkpoints and requeues"),
    "trials_per_gpu": (int, "trials sharing one GPU, through SLURM GPU sharding (--gres=shard)"),
    "nodes": (int, "nodes per trial job: a train.devices=N training puts N / nodes ranks on each"),
}
PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "SUSPENDED", "STOPPED", "RESIZING"}
CACHE_S = 2.0  # one squeue call per job array per poll, however many trials ask


class TrialTask(submitit.helpers.Checkpointable):
    """The SLURM job function: run one trial. submitit's inherited `checkpoint()` requeues this same call,
    so a requeued job simply runs the trial again and the trainer resumes from its last checkpoint."""

    def __call__(self, trial_dir: str, token: str) -> int:
        import torch

        from sweeper.search.worker import main, run_rank

        torch.set_num_threads(
            int(os.environ.get("SLURM_CPUS_PER_TASK") or torch.get_num_threads())
        )  # the job's cores, not the node's
        job = submitit.JobEnvironment()
        if job.num_tasks > 1:  # one rank of a train.devices=N training; each picks cuda:LOCAL_RANK itself
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            if job.global_rank != 0:
                return run_rank(Path(trial_dir), token)
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        print(f"[sweeper] {trial_dir}: SLURM job {job.job_id}, restart {restart}, pid {os.getpid()}, "
              f"starting at step {checkpoint_step(Path(trial_dir))} ({job.num_tasks} task(s))", flush=True)  # fmt: skip
        return main([trial_dir, token])  # leaves result.json, "failed" with the reason on an exception


def job_devices(jobs: list[TrialJob]) -> int:
    """The ranks each of `jobs` trains on (`train.devices` of their config.yaml): one array holds one kind."""
    import yaml

    counts = {
        int(yaml.safe_load((job.trial_dir / "config.yaml").read_text())["train"].get("devices", 1)) for job in jobs
    }
    if len(counts) > 1:
        raise UserError(
            f"trials of one submission train on different train.devices ({sorted(counts)}); give them one value"
        )
    return counts.pop()


def checkpoint_step(trial_dir: Path) -> int:
    """The GAN step the trial resumes from: that of `ckpt/last.pt` (memory-mapped, cheap), 0 when there is none."""
    import torch

    path = trial_dir / "ckpt" / "last.pt"
    if not path.exists():
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])


def squeue(job_id: str) -> dict[str, str] | None:
    """SLURM state of each task of a job or job array (e.g. {"12_0": "RUNNING"}); {} when SLURM no longer
    knows it, None when squeue cannot tell (controller unreachable)."""
    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", job_id, "-o", "%i %T"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    if out.returncode != 0:
        return {} if "Invalid job id" in out.stderr else None
    return dict(line.split()[:2] for line in out.stdout.splitlines() if line.strip())


def slurm_state(job_id: str) -> str:
    """SLURM's own name for a job's state (RUNNING, PENDING, COMPLETED, TIMEOUT, ...), for `sweeper status`."""
    rows = squeue(job_id)
    return "?" if rows is None else rows.get(job_id, "GONE")


def shards_per_gpu(gres: str) -> int | None:
    """Shards per GPU of a node from sinfo's `%G` (e.g. "gpu:a100:4,shard:16(S:0-1)" -> 4); None without sharding."""
    counts: dict[str, int] = {}
    for item in gres.split(","):
        fields = item.split("(")[0].split(":")
        if len(fields) >= 2 and fields[-1].isdigit():
            counts[fields[0]] = counts.get(fields[0], 0) + int(fields[-1])
    return counts["shard"] // counts["gpu"] if counts.get("shard") and counts.get("gpu") else None


def shard_request(per_gpu: int, partition: str | None) -> str:
    """The `--gres` value giving a job 1/per_gpu of a GPU; UserError when the nodes offer no shards."""
    cmd = ["sinfo", "-h", "-o", "%G", *(["-p", partition] if partition else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    found = [k for k in map(shards_per_gpu, out.stdout.split()) if k]
    if not found:
        raise UserError(f"executor.trials_per_gpu={per_gpu}: the nodes offer no GPU shards (sinfo gres: {out.stdout.split() or 'none'}); "
                        "configure SLURM GPU sharding (docs/CLUSTER.md) or use executor.trials_per_gpu=1")  # fmt: skip
    return f"shard:{max(1, max(found) // per_gpu)}"


def _checked(key: str, value: Any) -> Any:
    kind, meaning = OPTIONS[key]
    if kind in (float, str) and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = kind(value)  # mem_gb=4 -> 4.0, account=1234 -> "1234"
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UserError(f"executor.{key}={value!r}: expected {kind.__name__} ({meaning})")
    if isinstance(value, (int, float)) and (value < 0 or (value == 0 and key not in ("gpus_per_node", "max_requeues"))):
        raise UserError(f"executor.{key}={value!r}: must be positive ({meaning})")
    return value


class SlurmExecutor:
    name = "slurm"

    def __init__(self, params: dict[str, Any], workspace: Path) -> None:
        self.params = params
        self.folder = workspace / "slurm" / "%j"
        self._squeue_cache: dict[str, tuple[float, dict[str, str] | None]] = {}

    @classmethod
    def from_options(cls, options: dict[str, Any], workspace: Path, preset: str = "paper") -> SlurmExecutor:
        """Validated options on top of the preset's defaults; UserError naming a bad key or value."""
        for key in options:
            if key not in OPTIONS:
                raise UserError(f"executor.{key} is not an option of executor=slurm; valid: "
                                + ", ".join(f"executor.{k}" for k in OPTIONS))  # fmt: skip
        if shutil.which("sbatch") is None:
            raise UserError(
                "executor=slurm: sbatch is not on PATH; run on a SLURM login node (or `scripts/slurm-local up`)"
            )
        params = {**PRESET_DEFAULTS.get(preset, PRESET_DEFAULTS["paper"]), "array_parallelism": 256, "max_requeues": 10}
        params.update({key: _checked(key, value) for key, value in options.items()})
        # The requeue signal must come well inside the limit: 2 minutes, or a quarter of a short limit.
        params.setdefault("signal_delay_s", min(120, params["timeout_min"] * 15))
        if params.get("trials_per_gpu", 1) > 1:  # a share of a GPU instead of whole GPUs
            params["gres"], params["gpus_per_node"] = (
                shard_request(params["trials_per_gpu"], params.get("partition")),
                0,
            )
        return cls(params, workspace)

    def check(self, sqlite_file: Path | None) -> None:
        """Before a run creates anything: ask sbatch (`--test-only`, nothing is queued) whether it accepts these
        settings, so a bad partition, account or GPU request fails now; warn when the storage is SQLite."""
        p = self.params
        flags = [
            f"--time={p['timeout_min']}",
            f"--cpus-per-task={p['cpus_per_task']}",
            f"--mem={round(p['mem_gb'] * 1024)}M",
        ]
        flags += [f"--{key}={p[key]}" for key in ("partition", "account", "qos", "constraint") if p.get(key)]
        flags += [f"--gpus-per-node={p['gpus_per_node']}"] if p["gpus_per_node"] else []
        flags += [f"--gres={p['gres']}"] if p.get("gres") else []
        flags += [
            f"--{key.replace('_', '-')}"
            + ("" if value is True else f"={value}")  # a flag without a value, as submitit writes it
            for key, value in (p.get("additional_parameters") or {}).items()
        ]
        out = subprocess.run(
            ["sbatch", "--test-only", *flags, "--wrap", "true"], capture_output=True, text=True, timeout=60
        )
        if out.returncode != 0:
            lines = out.stderr.strip().splitlines() or ["no reason given"]
            reason = next((line for line in lines if "error" in line), lines[-1])
            raise UserError(f"executor=slurm: sbatch rejects {' '.join(flags)}: {reason}")
        if sqlite_file is not None:
            print(
                f"warning: storage is SQLite ({sqlite_file}): run `sweeper run` for this study from one machine only; "
                "workers on several machines need storage=postgresql+psycopg2://... (docs/CLUSTER.md)"
            )

    def _submitit(self, name: str, devices: int = 1) -> submitit.AutoExecutor:
        """An executor for jobs of `devices` ranks each (one task per rank, one GPU per task where GPUs are asked)."""
        p = self.params
        nodes = p.get("nodes", 1)
        if devices % nodes or (devices > 1 and p.get("trials_per_gpu", 1) > 1):
            raise UserError(
                f"train.devices={devices} does not fit executor.nodes={nodes}, executor.trials_per_gpu="
                f"{p.get('trials_per_gpu', 1)}: a training's ranks are spread evenly over whole nodes and GPUs"
            )
        ex = submitit.AutoExecutor(folder=self.folder, cluster="slurm", slurm_max_num_timeout=p["max_requeues"])
        optional = {
            f"slurm_{k}": p[k]
            for k in ("partition", "account", "qos", "constraint", "additional_parameters")
            if p.get(k)
        }
        optional |= {"nodes": nodes, "tasks_per_node": devices // nodes} if devices > 1 else {}
        if p["gpus_per_node"]:
            optional["gpus_per_node"] = p["gpus_per_node"] if devices == 1 else devices // nodes
        if p.get("gres"):
            optional["slurm_gres"] = p["gres"]
        ex.update_parameters(
            name=name, timeout_min=p["timeout_min"], cpus_per_task=p["cpus_per_task"], mem_gb=p["mem_gb"],
            slurm_array_parallelism=p["array_parallelism"], slurm_signal_delay_s=p["signal_delay_s"], **optional,
        )  # fmt: skip
        return ex

    def slots(self) -> int:
        return self.params["array_parallelism"]

    def submit(self, jobs: list[TrialJob]) -> list[str]:
        """Submit the jobs as one array named after their tokens' batch (a single job when there is one); ids
        look like `1234_0`."""
        if not jobs:
            return []
        batch = jobs[0].token.rsplit(".", 1)[0]
        assert [job.token for job in jobs] == [f"{batch}.{i}" for i in range(len(jobs))], "one batch, in order"
        private_dir(self.folder.parent, "SLURM job folder")  # its pickles are unpickled on the node as you
        ex = self._submitit(f"sweeper-{batch}", job_devices(jobs))
        try:
            with ex.batch():
                handles = [ex.submit(TrialTask(), str(job.trial_dir), job.token) for job in jobs]
        except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError, OSError) as e:
            raise UserError(f"sbatch refused the jobs: {str(e).strip().splitlines()[-1]}") from None
        return [h.job_id for h in handles]

    def find(self, token: str) -> str | None:
        batch, index = token.rsplit(".", 1)
        out = subprocess.run(["squeue", "-h", "-r", "-t", "all", f"--name=sweeper-{batch}", "-o", "%i"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        ids = out.stdout.split()
        if out.returncode != 0 or not ids:
            return None
        return next((i for i in ids if i.endswith(f"_{index}")), ids[0] if len(ids) == 1 and index == "0" else None)

    def _squeue(self, array_id: str) -> dict[str, str] | None:
        cached = self._squeue_cache.get(array_id)
        if cached and time.monotonic() - cached[0] < CACHE_S:
            return cached[1]
        rows = squeue(array_id)
        self._squeue_cache[array_id] = (time.monotonic(), rows)
        return rows

    def state(self, job_id: str) -> str:
        if not job_id:  # claimed but never submitted (the sweeper died in between): nothing runs
            return "ENDED"
        rows = self._squeue(job_id.split("_")[0])
        if rows is None:  # the controller did not answer: only a result file is certain
            return "ENDED" if self._paths(job_id).result_pickle.exists() else "UNKNOWN"
        slurm = rows.get(job_id)
        if slurm in PENDING:
            return "PENDING"
        if slurm in RUNNING:
            return "RUNNING"
        return "ENDED"  # a final state, or purged from the controller (it ended a while ago)

    def cancel(self, job_ids: list[str]) -> None:
        if job_ids:  # scancel ignores ids of ended jobs (with a warning on stderr)
            subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60)
            self._squeue_cache.clear()

    def kill(self, job_ids: list[str]) -> None:
        """scancel: SLURM sends SIGTERM to every task, then SIGKILL after its KillWait (30 s by default)."""
        self.cancel(job_ids)

    def _paths(self, job_id: str) -> submitit.core.utils.JobPaths:
        return submitit.core.utils.JobPaths(self.folder, job_id=job_id, task_id=0)

    def log_paths(self, job_id: str) -> tuple[Path, Path]:
        paths = self._paths(job_id)
        return paths.stdout, paths.stderr
