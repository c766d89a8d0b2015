"""What one `sweeper run` works with (`Run`: study, options, workspace, stores, executors, owner) and the checks
made before anything is created: weights, data, the selection metric, inputs from earlier studies' winners.
Also the reuse of a complete trial with the same identity anywhere in the workspace.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from mlflow import MlflowClient
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from sweeper.core import halving
from sweeper.core.overrides import Options
from sweeper.core.studies import Study
from sweeper.core.workspace import Workspace
from sweeper.search.executors import Executor, make_executor
from trainer import image_sets, weight_files
from trainer.config import build_config, parse_value
from trainer.errors import UserError
from trainer.files import write_bytes_atomic

# --- Checks before anything is created ---


def default_select_by(opts: Options) -> str:
    """`select_by=`, else the preset's: psnr for preset=smoke (said once), lpips (the paper's) otherwise."""
    if opts.select_by:
        return opts.select_by
    if opts.preset == "smoke":
        print(
            "preset=smoke: winners are picked by mean PSNR (select_by=psnr); pass select_by=lpips for the paper's criterion"
        )
        return "psnr"
    return "lpips"


def check_weights(config: dict[str, Any], preset: str, select_by: str) -> dict[str, Any]:
    """The weights policy, said before training: returns the config with `weights` settled.

    Missing ImageNet extractor weights: preset=smoke falls back to weights=random with a warning, other
    presets stop naming the files (unless weights=random is given). LPIPS without AlexNet weights stops
    when it is the selection metric.
    """
    config = dict(config)
    kind = str(config.get("weights", "imagenet"))
    lacking = weight_files.missing(["vgg19", "resnet50"]) if kind == "imagenet" else []
    if lacking and preset == "smoke":
        print(
            f"warning: ImageNet weights missing ({', '.join(f.name for f in lacking)}): preset=smoke trains with weights=random (plumbing only)"
        )
        config["weights"] = "random"
    elif lacking:
        raise weight_files.MissingWeightsError(lacking[0], weight_files.cache_dir() / lacking[0].name, also=lacking[1:])
    elif kind != "imagenet":
        weight_files.describe(kind)
    trunk = weight_files.FILES[
        weight_files.LPIPS_TRUNKS.get(str(config.get("metrics.lpips_net", "alex")), "alexnet")
    ]  # metrics.lpips_net's
    if not (weight_files.cache_dir() / trunk.name).is_file():
        if select_by == "lpips":
            raise UserError(
                f"select_by=lpips needs LPIPS, but the {trunk.network} weights {trunk.name} are missing from {weight_files.cache_dir()}; "
                f"`sweeper weights import FILE` them or pass select_by=psnr"
            )
        print(
            f"note: LPIPS unavailable (no {trunk.network} weights): trials record lpips as null; selecting by {select_by}"
        )
    return config


def check_data(config: dict[str, Any]) -> dict[str, Any]:
    """Settle the data root's sets (`trainer.image_sets.settle_sets`), say what the run trains and validates on,
    and decode the validation images and read the training images' headers once, so a missing root or set or an
    unreadable or too small image fails now (the training sets are prepared by the first trial that needs them,
    or `sweeper data prepare`). Returns the config with the sets settled."""
    config = image_sets.settle_sets(config)
    cfg = build_config(config)
    print(image_sets.describe_sets(cfg))
    image_sets.check_val_sets(cfg)
    image_sets.check_train_sets(cfg)
    return config


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
    owner: str  # this process, as recorded on the trials it runs (`sweeper.search.leases.owner_id`)
    executors: dict[str, Executor] = field(
        default_factory=dict
    )  # by name: each trial is watched by the one that started it

    def executor_of(self, trial: FrozenTrial) -> Executor:
        name = trial.user_attrs.get("executor", self.executor.name)
        if name not in self.executors:
            self.executors[name] = (
                self.executor if name == self.executor.name else make_executor(name, {}, self.ws.root)
            )
        return self.executors[name]


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
            raise UserError(
                f"{key}= is what stage {searched[key]!r} of study {study.name} searches; remove it (or write your own study file)"
            )
    config = dict(study.config)
    for key, source in study.inputs.items():
        if key in opts.config:
            continue
        winner = study_winner(ws.open_storage(), source) if ws.exists() else None
        if winner is None:
            raise UserError(
                f"study {study.name} takes {key} from the winner of study {source}, which has none in {ws.root}; run study={source} first or pass {key}=VALUE"
            )
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
    result.json, beside the trial's own config.yaml (which records this grid point's settings). Symbolic links
    in the source are skipped, never followed."""
    if (source / "samples").is_dir() and not (source / "samples").is_symlink():  # links are never followed
        shutil.copytree(
            source / "samples",
            trial_dir / "samples",
            dirs_exist_ok=True,
            ignore=lambda folder, names: [n for n in names if os.path.islink(os.path.join(folder, n))],
        )
    if (source / "metrics.jsonl").is_file() and not (source / "metrics.jsonl").is_symlink():
        shutil.copyfile(source / "metrics.jsonl", trial_dir / "metrics.jsonl")
    write_bytes_atomic(trial_dir / "result.json", (source / "result.json").read_bytes())
