"""Shared fixtures, and each pytest-xdist worker pinned to a core of its own.

The suite runs in two (`-n auto`: one per core) workers. Each worker and everything it starts (sweepers,
zygotes, trials: the product gives a trial the cores of its affinity) keeps to one core, so two tests
never oversubscribe the machine, and a test sees a steady one-core machine whatever the other worker does.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ... (unset without xdist or with -n 0)
    if worker:
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[int(worker.removeprefix("gw")) % len(cores)]})


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The benchmark data beside the repository (../shared/data); the test is skipped without it."""
    if not (SHARED_DATA / "Set5").is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA} (Set5, Set14, BSD100, T91, BSD200 expected)")
    return SHARED_DATA


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty $TORCH_HOME: no ImageNet weights are present unless the test writes them."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def fresh_lpips() -> None:
    """LPIPS is built once per process (`trainer.metrics.lpips_model`); a test that planted ImageNet weights in
    its own $TORCH_HOME must not hand that model to the next test, which may have none."""
    from trainer.metrics import lpips_model

    lpips_model.cache_clear()
