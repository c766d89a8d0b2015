"""`sweeper export --from STUDY [--trial N] --out FILE.safetensors`: a study's winner (or any finished trial) as a
generator weights file others can load, with a JSON card in its metadata (`trainer.generator_files`).

The card says what the weights are and where they came from: architecture, the trial's config, the hash of its
prepared training data, its final metrics and how they were scored, the weights it used (extractors, LPIPS,
the generator's start), the study, stage, trial and iteration, and the commit it was trained at. The file is
read back after writing and must hold exactly the checkpoint's tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sweeper.analysis.report import load_study
from sweeper.analysis.runs import RunRecord, find_runs, finished, open_client
from sweeper.core.overrides import flag_or_key, parse
from sweeper.core.workspace import Workspace
from trainer.checkpoint import load_checkpoint
from trainer.config import config_from_dict
from trainer.errors import UserError
from trainer.generator_files import read_card, read_state, save_export
from trainer.nets import build_generator

NETWORKS = {"srgan": "SRResNet (MSRResNet form)", "esrgan": "RRDBNet"}


def pick_trial(client: Any, study: str, trial: int | None, stage: str | None) -> RunRecord:
    """The study's winner (trial None), or its finished trial number `trial` (in `stage` when several stages have one)."""
    if trial is None:
        winner = load_study(client, study).winner()
        if winner is None:
            raise UserError(
                f"study {study} has no winner yet: finish it with `sweeper run study={study}`, or pick one with --trial N"
            )
        return winner
    runs = [r for r in finished(find_runs(client, "trial", study)) if r.tags.get("sweeper.trial_number") == str(trial)]
    runs = [r for r in runs if stage is None or r.stage == stage]
    if len({r.stage for r in runs}) > 1:
        raise UserError(
            f"--trial {trial}: stages {', '.join(sorted({r.stage for r in runs}))} of {study} each have one; add stage=NAME"
        )
    if not runs:
        raise UserError(
            f"--trial {trial}: no finished trial with that number in study {study}"
            + (f", stage {stage}" if stage else "")
        )
    return runs[-1]


def card(run: RunRecord, config: dict[str, Any], result: dict[str, Any], step: int) -> dict[str, Any]:
    """What the exported file is and where it came from."""
    cfg = config_from_dict(config)
    m = cfg.model
    return {
        "format": "dp-sweeper generator 1",
        "architecture": {
            "arch": cfg.arch,
            "network": NETWORKS[cfg.arch],
            "upscale": cfg.upscale,
            "num_feat": m.num_feat,
            "num_blocks": m.num_blocks or (16 if cfg.arch == "srgan" else 23),
            "growth": m.growth,
            "batchnorm": m.batchnorm,
            "skip": m.skip,
        },
        "config": config,
        "data_hash": result.get("data_id", "unknown"),
        "metrics": result.get("final", {}),
        "metrics_protocol": result.get("metrics", {}),
        "weights_used": result.get("weights", {}),
        "source": {
            "study": run.tags.get("sweeper.study"),
            "stage": run.stage,
            "trial": run.tags.get("sweeper.trial_number"),
            "mlflow_run_id": run.run_id,
            "iteration": step,
        },
        "commit": run.tags.get("sweeper.git_commit", "unknown"),
    }


def main(source: str | None, trial: int | None, out: Path, tokens: list[str]) -> None:
    """The `sweeper export` command."""
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: the file name must end in .safetensors")
    opts = parse(tokens, allow_config=False, recorded=True)
    source = flag_or_key("--from", source, "study", opts.study, "studies")
    if source is None:
        raise UserError("which study? pass --from NAME (or study=NAME; `sweeper studies` lists them)")
    trial = flag_or_key("--trial", trial, "trial", opts.trial, "trials")
    client = open_client(opts)
    run = pick_trial(client, source, trial, opts.stage)
    folder = Workspace.resolve(opts.workspace, opts.storage, opts.tracking_uri).trial_dir(
        source, run.stage, int(run.tags["sweeper.trial_number"])
    )
    ckpt_path, result_path = folder / "ckpt" / "last.pt", folder / "result.json"
    if not ckpt_path.is_file() or not result_path.is_file():
        raise UserError(f"{folder}: the trial folder has no checkpoint and result (moved, or another workspace=?)")
    ckpt = load_checkpoint(ckpt_path)
    state = ckpt.get("ema") or ckpt["g"]
    build_generator(config_from_dict(ckpt["config"])).load_state_dict(state)  # the config and weights agree
    written = card(run, ckpt["config"], json.loads(result_path.read_text()), int(ckpt["step"]))
    save_export(out, state, written)
    back = read_state(out)
    if (
        back.keys() != state.keys()
        or not all(torch.equal(back[k], v) for k, v in state.items())
        or read_card(out) != json.loads(json.dumps(written, sort_keys=True, default=str))
    ):
        raise RuntimeError(f"{out}: read back, the file differs from the checkpoint it was written from")
    a = written["architecture"]
    print(
        f"exported {source} stage {run.stage} trial {written['source']['trial']} (iteration {ckpt['step']}, {a['network']} x{a['upscale']}) to {out}"
    )
    print(
        f"card: commit {written['commit']}, data {written['data_hash']}, weights {written['weights_used'].get('extractors', '?')}; "
        f"load it with `model.init_from={out}` or trainer.generator_files.read_state"
    )
