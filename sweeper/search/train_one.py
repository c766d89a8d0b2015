"""`sweeper train`: one training outside a study, here or as a job of an executor, logged to MLflow (experiment "train")."""

from __future__ import annotations

import time
import uuid
from typing import Any

import yaml
from mlflow import MlflowClient

from sweeper.core.mlflow_names import experiment, git_commit
from sweeper.core.overrides import Options, parse
from sweeper.core.workspace import Workspace
from sweeper.search import tracking
from sweeper.search.executors import TrialJob, make_executor
from sweeper.search.machine import read_result
from sweeper.search.progress import read_progress, show
from sweeper.search.session import check_data, check_weights
from trainer.config import build_config
from trainer.errors import UserError
from trainer.files import write_json_atomic, write_text_atomic
from trainer.terminal import bar


def train_one(tokens: list[str], extra_tags: dict[str, str] | None = None) -> None:
    """`sweeper train key=value...`: one training run in the workspace, logged to MLflow (experiment "train");
    `extra_tags` are added to its run (`sweeper promote` links the run to its source with them)."""
    from trainer.train import train

    opts = parse(tokens)
    if opts.study or opts.trial is not None:
        raise UserError(
            "sweeper train takes training settings (and workspace=, tracking_uri=); use `sweeper run` for studies"
        )
    ws = Workspace.resolve(opts.workspace, opts.storage, opts.tracking_uri)
    config = check_data(check_weights(opts.config, opts.preset, opts.select_by or "psnr"))
    cfg = build_config(config)
    runs = ws.root / "trials" / "train" / "run"
    number = 1 + max((int(p.name) for p in runs.glob("*") if p.name.isdigit()), default=-1)
    run_dir = ws.trial_dir("train", "run", number)
    if opts.executor == "local":
        result = train(cfg, run_dir, ws.cache_dir, progress=True)
    else:
        result = train_on_executor(
            opts, ws, cfg.to_dict(), TrialJob("train", "run", number, run_dir, f"{uuid.uuid4().hex[:12]}.0")
        )
    if result.get("status") != "complete":
        raise UserError(f"training failed: {result.get('reason')} (folder {run_dir})")
    client = MlflowClient(ws.tracking_uri)
    experiment_id = experiment(client, "train", ws.artifacts_dir)
    tags = {"sweeper.study": "train", "sweeper.stage": "run", "sweeper.trial_number": str(number), "sweeper.preset": opts.preset,
            "sweeper.git_commit": git_commit(), **(extra_tags or {})}  # fmt: skip
    run_id = tracking.log_trial(client, experiment_id, None, run_dir, cfg.to_dict(), tags)
    print(f"\n{'set':<10}{'PSNR':>8}{'SSIM':>8}{'LPIPS':>8}")
    for set_name, m in result["final"].items():
        lp = f"{m['lpips']:.4f}" if isinstance(m.get("lpips"), (int, float)) else "n/a"
        print(f"{set_name:<10}{m['psnr']:>8.2f}{m['ssim']:>8.4f}{lp:>8}")
    print(f"\nfolder {run_dir}\nMLflow run {run_id} (experiment train): sweeper ui{opts.where}")


def train_on_executor(opts: Options, ws: Workspace, config: dict[str, Any], job: TrialJob) -> dict[str, Any]:
    """Run one training as a job of `opts.executor` (a SLURM job for `executor=slurm`), wait for it with a
    progress bar, and return its result.json; a requeued job (time limit, preemption) resumes on its own."""
    executor = make_executor(opts.executor, opts.executor_options, ws.root, opts.preset)
    executor.check(ws.sqlite_file())
    write_text_atomic(job.trial_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    write_json_atomic(job.trial_dir / "budget.json", {"stop_after": None, "token": job.token})
    (job_id,) = executor.submit([job])
    out, err = executor.log_paths(job_id)
    print(f"submitted as {executor.name} job {job_id}; stdout {out}, stderr {err}")
    with bar(desc=f"{executor.name} job {job_id}", unit="it", disable=None) as job_bar:
        while not (job.trial_dir / "result.json").exists() and executor.state(job_id) != "ENDED":
            show(job_bar, read_progress(job.trial_dir))
            time.sleep(1.0)
    return read_result(job.trial_dir) or {
        "status": "failed",
        "reason": f"job {job_id} ended without result.json (see {err})",
    }
