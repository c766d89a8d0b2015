"""The cost ledger of a run folder: one JSON line per `train()` call (docs/ARCHITECTURE.md, "Cost ledger").

A call is one job segment: a whole run, one rung of successive halving, or a resume after a requeue or
an interrupt. Its line says which GAN iterations it trained (`from_step` -> `to_step`), its wall time, its
device-seconds (GPU-seconds = wall x the share of the GPU booked for it, `$GPU_SHARE`, 1 unless runs are
packed on a GPU; or CPU core-seconds = wall x intra-op threads; times `devices` for a training on several
ranks) and the pre-training it trained
or reused from the shared cache. The file is rewritten whole and renamed over (atomically) at every
checkpoint and when the call ends, so a kill leaves the segment as of its last checkpoint, never half a line.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer import distributed
from trainer.files import write_text_atomic

LEDGER = "ledger.jsonl"


@dataclass
class Segment:
    """This call's line of `<run_dir>/ledger.jsonl`, kept current by `record`."""

    run_dir: Path
    from_step: int
    device: str  # "cuda" | "cpu"
    devices: int = 1  # ranks of the training (train.devices); only rank 0 writes the line
    pretrain: str = "none"  # "trained" (some of it, by this call) | "reused" (from the cache) | "none"
    pretrain_iters: int = 0  # pre-training iterations this call trained
    pretrain_s: float = 0.0
    t0: float = field(default_factory=time.monotonic)
    earlier: str = ""  # the ledger's lines from earlier calls

    def __post_init__(self) -> None:
        path = self.run_dir / LEDGER
        self.earlier = path.read_text() if path.exists() else ""

    def line(self, to_step: int) -> dict:
        wall = time.monotonic() - self.t0
        share = float(os.environ.get("GPU_SHARE", 1)) if self.device == "cuda" else torch.get_num_threads()
        share *= self.devices
        return {"from_step": self.from_step, "to_step": to_step, "iters": to_step - self.from_step, "wall_s": round(wall, 3),
                "device": self.device, "devices": self.devices, "device_s": round(wall * share, 3), "pretrain": self.pretrain,
                "pretrain_iters": self.pretrain_iters, "pretrain_s": round(self.pretrain_s, 3)}  # fmt: skip

    def record(self, to_step: int) -> None:
        """Rewrite the ledger with this call's line as of GAN step `to_step` (rank 0 of several only)."""
        if not distributed.world().main:
            return
        write_text_atomic(self.run_dir / LEDGER, self.earlier + json.dumps(self.line(to_step)) + "\n")
