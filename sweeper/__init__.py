"""sweeper: the paper's alternating hyperparameter search as resumable Optuna studies logged to MLflow.

Layers, each importing only those below it (tests/test_layers.py checks it):

    cli/       the `sweeper` command line (thin, over api)
    api.py     the Python API: run_study, status, report, with typed results
    search/    running studies: the trial state machine, executors, MLflow writing, promote, plan
    analysis/  reading results back: runs, statistics, tables, figures, report, correlate, rank check
    core/      what a study is: study files, options, selection, identity, workspace, halving
    trainer    (a separate package) the SR training library, which knows nothing of sweeps

The Python API (`sweeper/api.py`, between search and cli) is exposed here lazily, so that `import sweeper` and
`sweeper --help` import nothing heavy: `from sweeper import run_study, status, report`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sweeper.api import Report, StudyResult, report, run_study, status

__all__ = ["Report", "StudyResult", "report", "run_study", "status"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from sweeper import api

        return getattr(api, name)
    raise AttributeError(f"module 'sweeper' has no attribute {name!r}")
