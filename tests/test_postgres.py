"""PostgreSQL as the Optuna storage for workers on several machines: `scripts/pg-local` starts a private
PostgreSQL 15, and claiming a grid point is atomic in it, so two processes never take the same trial."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from cluster_helpers import REPO, postgres

pytestmark = pytest.mark.postgres
CLAIMS = 120

CLAIMER = """
import sys, optuna
from sweeper.core.workspace import claim
storage = optuna.storages.get_storage(sys.argv[1])
study_id = storage.get_study_id_from_name("claims")
while (trial := claim(storage, study_id)) is not None:
    print(trial.number, flush=True)
"""


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with postgres() as url:
        yield url


def test_pg_local_serves_postgresql_15_until_stopped() -> None:
    with postgres() as url:
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SHOW server_version")).scalar().startswith("15.")
        engine.dispose()
        port = sqlalchemy.engine.make_url(url).port
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_two_processes_never_claim_the_same_trial(pg_url: str) -> None:
    study = optuna.create_study(storage=pg_url, study_name="claims")
    for i in range(CLAIMS):
        study.enqueue_trial({"x": i}, skip_if_exists=False)
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, pg_url], cwd=REPO, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    claimed = [[int(n) for n in p.communicate(timeout=300)[0].split()] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert all(claimed), "both processes should have claimed some trials"
    assert sorted(claimed[0] + claimed[1]) == list(range(CLAIMS))  # each trial exactly once


def test_pg_local_refuses_a_folder_in_use(tmp_path: Path) -> None:
    (tmp_path / "pg").mkdir()
    (tmp_path / "pg" / "keep.txt").write_text("mine")
    done = subprocess.run([REPO / "scripts" / "pg-local", "start", tmp_path / "pg"], capture_output=True, text=True)
    assert done.returncode == 1 and "is not empty" in done.stderr
    assert (tmp_path / "pg" / "keep.txt").read_text() == "mine"
