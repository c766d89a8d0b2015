"""Two `sweeper run` processes on one study at the same time split the grid: every point runs exactly
once, both workers take part, and MLflow holds one run per point. On SQLite (one machine), a journal file (shared file system) and PostgreSQL."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest
from cluster_helpers import (
    REPO,
    TINY,
    assert_grid_once,
    env_for,
    postgres,
    sweeper_args,
    write_study,
)

MUS = ["0.5", "1", "5", "inf"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "journal", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_two_workers_finish_the_grid_exactly_once(tmp_path: Path, backend: str) -> None:
    env = env_for(tmp_path)
    write_study(tmp_path, "cl_workers", MUS)
    ws = tmp_path / "ws"
    tracking_uri = f"sqlite:///{ws / 'mlflow.db'}"
    files = {"sqlite": f"sqlite:///{ws / 'optuna.db'}", "journal": f"journal://{ws / 'optuna.journal'}"}
    with postgres() if backend == "postgresql" else contextlib.nullcontext(files[backend]) as storage:
        args = ["run", "study=cl_workers", f"workspace={ws}", f"storage={storage}", *TINY, "executor.n_jobs=1"]
        workers = [subprocess.Popen(sweeper_args(args), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for _ in range(2)]  # fmt: skip
        outputs = [w.communicate(timeout=600) for w in workers]
        assert [w.returncode for w in workers] == [0, 0], [err for _, err in outputs]
        complete = assert_grid_once(storage, tracking_uri, "cl_workers", MUS)
        owners = {t.user_attrs["owner"].rsplit(":", 2)[1] for t in complete}
        assert owners == {str(w.pid) for w in workers}  # both workers ran trials
        assert len({t.user_attrs["trial_dir"] for t in complete}) == len(MUS)
