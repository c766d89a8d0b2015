"""The Python API for notebooks and scripts: `from sweeper import run_study, status, report`. The floor between the
search and the command line: each function takes the command line's settings as keyword arguments and returns
typed results instead of printing only; the `sweeper` commands are thin wrappers over it.

Settings are those of the command line (README, "Command line"), given as keyword arguments with `__` for the dot
(`train__iters=2000`, `executor__n_jobs=2`) or as a mapping with the dotted keys (`overrides={"train.iters": 2000}`).
A string value is read as on the command line (`"[Set5,Set14]"`, `"inf"`); any other value is taken as it is
(`math.inf`, `["Set5", "Set14"]`); None leaves a setting at its default. May import every layer below (search,
analysis, core, trainer); only the command line and the package root (`sweeper`, lazily) import it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeper.core.overrides import Options, options
from trainer.errors import UserError

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class StudyResult:
    """What `run_study` leaves: the winner of the study's last stage (None when `detach` submitted jobs and
    returned), the metric it was selected by, and every trial of every stage as `status` gives them."""

    study: str
    workspace: Path
    select_by: str
    winner: dict[str, str] | None
    trials: pd.DataFrame


@dataclass(frozen=True)
class Report:
    """What `report` wrote: the folder, its README.md, the tables' keys (e.g. `table1_Set5`), every file
    written, and the MLflow run the report was attached to (None when the study has no stage run)."""

    out: Path
    readme: Path
    tables: list[str]
    files: list[Path]
    mlflow_run_id: str | None


def settings(study: str | None, overrides: Mapping[str, Any] | None, keywords: Mapping[str, Any],
             allow_config: bool = True, recorded: bool = False, uses: tuple[str, ...] = ()) -> Options:  # fmt: skip
    """The options of a call: `study`, `overrides` (dotted keys) and keyword settings (`__` for the dot),
    each key given once; None values left out. `allow_config=False`: sweeper options only (no config keys);
    `recorded`, `uses`: no keys that steer or judge a run either (`overrides.parse`)."""
    given: dict[str, Any] = {}
    named = {k.replace("__", "."): v for k, v in keywords.items()}
    for source in (dict(overrides or {}), named, {} if study is None else {"study": study}):
        for key, value in source.items():
            if key in given:
                raise UserError(f"{key}= is given twice; keep one")
            given[key] = value
    return options({k: v for k, v in given.items() if v is not None}, allow_config, recorded, uses)


def run_study(study: str | None = None, overrides: Mapping[str, Any] | None = None, *, detach: bool = False,
              **keywords: Any) -> StudyResult:  # fmt: skip
    """Run or resume a study, as `sweeper run`: e.g. `run_study("mu_search", preset="smoke", train__iters=2000)`.
    Prints the same progress and winner lines; returns the winner and the trials."""
    from sweeper.search.run import run

    opts = settings(study, overrides, keywords)
    outcome = run(opts, detach=detach)
    return StudyResult(outcome.study, outcome.workspace, outcome.select_by, outcome.winner, _frame(opts))


def status(study: str | None = None, overrides: Mapping[str, Any] | None = None, **keywords: Any) -> pd.DataFrame:
    """A study's trials, one row each, as `sweeper status --format json` lists them: stage, number, state,
    winner, the grid point's settings as columns, the metrics (`mean/psnr`, `Set5/lpips`, ...), duration,
    attempt, reason, trial folder and MLflow run id. Creates nothing; UserError when the study never ran."""
    return _frame(settings(study, overrides, keywords, allow_config=False, recorded=True))


def report(study: str | None = None, out: str | Path | None = None, overrides: Mapping[str, Any] | None = None, *,
           checkpoint: str | int = "final", holdout: str | list[str] | None = None, **keywords: Any) -> Report:  # fmt: skip
    """Write a study's tables and figures, as `sweeper report` (default folder `results/<study>`); `checkpoint`:
    the generator each trial row shows, "final", an iteration kept by `train.keep_every`, or "best" by the
    selection metric on the `holdout` sets (never a set the tables report)."""
    from sweeper.analysis import checkpoints
    from sweeper.analysis.report import USES, write

    folder = Path(out) if out is not None else None
    choice = checkpoints.parse(checkpoint, holdout)
    opts = settings(study, overrides, keywords, allow_config=False, recorded=True, uses=USES)
    written = write(opts, folder, choice=choice)
    files = sorted(p for p in written.out.rglob("*") if p.is_file())
    return Report(written.out, written.out / "README.md", written.tables, files, written.run_id)


def _frame(opts: Options) -> pd.DataFrame:
    import pandas as pd

    from sweeper.search.status import study_trials

    rows = []
    for t in study_trials(opts).trials:
        row = {k: t[k] for k in ("stage", "number", "state", "winner")}
        row |= t["params"]
        row |= t["metrics"]
        row |= {k: t[k] for k in ("duration_s", "attempt", "reason", "reused_from", "reached_iters", "trial_dir",
                                  "mlflow_run_id")}  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)
