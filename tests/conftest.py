"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
