"""The heartbeat of a training: its run folder's `progress.json`, rewritten at least every `EVERY_S` seconds
while the process moves, which a stall watchdog watches (the sweeper's `executor.stall_s`).

The training loops write it with their step (`trainer.train.Progress`); long waits that are not stalls call
`beat(doing)` as they go: a lock another training holds (the pre-training cache, a data set it prepares), the
images of a data set this process prepares, the images of a validation, a GPU slot. Nothing beats from a
thread: a process that hangs (a hung file system, a deadlocked data worker, a hung collective) stops beating,
which is the point. Only the process `attach`ed to a folder writes (rank 0 of a training on several ranks).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.files import write_json_atomic

EVERY_S = 5.0  # the longest a moving training leaves progress.json unchanged
PROGRESS = "progress.json"


@dataclass
class _Heart:
    path: Path | None = None  # the progress file this process beats into; None: not attached
    record: dict[str, Any] = field(default_factory=dict)  # the training's last progress record, repeated by a beat
    written: float = 0.0  # time.monotonic() of the last write


_heart = _Heart()


@contextlib.contextmanager
def attached(run_dir: Path | None) -> Iterator[None]:
    """Beat into `run_dir`'s progress.json for the block (None: this process does not write, e.g. rank 1)."""
    before = _heart.path, _heart.record
    _heart.path, _heart.record = (run_dir / PROGRESS if run_dir is not None else None), {}
    try:
        yield
    finally:
        _heart.path, _heart.record = before


def attach(run_dir: Path) -> None:
    """Beat into `run_dir`'s progress.json for the rest of this process (a worker process of one trial)."""
    _heart.path, _heart.record = run_dir / PROGRESS, {}


def write(record: dict[str, Any]) -> None:
    """Write the training's progress record now (the step it reached); later beats repeat it."""
    if _heart.path is None:
        return
    _heart.record, _heart.written = record, time.monotonic()
    write_json_atomic(_heart.path, record)


def beat(doing: str) -> None:
    """This process still moves, `doing` something long that is not a training step (waiting for a lock or a
    GPU slot, preparing a data set, validating): rewrite the progress file with the last record and
    `"doing": doing`, at most every EVERY_S seconds."""
    if _heart.path is None or time.monotonic() - _heart.written < EVERY_S:
        return
    _heart.written = time.monotonic()
    write_json_atomic(_heart.path, {**_heart.record, "doing": doing})
