"""A study's stages and trials as its Optuna record has them, read without creating any store: what `sweeper status`,
the report and the rank check start from."""

from __future__ import annotations

from optuna.storages import BaseStorage

from sweeper.core.overrides import Options, require_study
from sweeper.core.workspace import Workspace
from trainer.errors import UserError


def stage_ids(opts: Options) -> tuple[str, Workspace, BaseStorage, dict[str, int]]:
    """(study, workspace, storage, stage name -> Optuna study id) of a study that has run; never creates a store."""
    name = require_study(opts)
    ws = Workspace.resolve(opts.workspace, opts.storage, opts.tracking_uri)
    storage = ws.open_storage() if ws.exists() else None
    prefix = f"{name}."
    stages = {} if storage is None else {
        s.study_name[len(prefix):]: storage.get_study_id_from_name(s.study_name) for s in storage.get_all_studies() if s.study_name.startswith(prefix)
    }  # fmt: skip
    if storage is None or not stages:
        raise UserError(
            f"study {name} has not been run in workspace {ws.root} (start it with `sweeper run study={name}{opts.where}`)"
        )
    if opts.stage is not None and opts.stage not in stages:
        raise UserError(f"stage={opts.stage!r}: study {name} has stages {', '.join(stages)}")
    return name, ws, storage, {k: v for k, v in stages.items() if opts.stage in (None, k)}
