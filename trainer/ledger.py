"""The cost ledger of a run folder: one JSON line per `train()` call (docs/ARCHITECTURE.md, "Cost ledger").

A call is one job segment: a whole run, one rung of successive halving, or a resume after a requeue or
an interrupt. Its line says which GAN iterations it trained (`from_step` -> `to_step`), its wall time, its
device-seconds (GPU-seconds = wall x the share of the GPU booked for it, `$GPU_SHARE`, 1 unless runs are
packed on a GPU; or CPU core-seconds = wall x intra-op threads; times `devices` for a training on several
ranks; `share`: device-seconds per second) and the pre-training it trained or reused from the shared cache.
The file is rewritten whole and renamed over (atomically) when the call starts, at every checkpoint and when
it ends, so a kill leaves the segment as of its last checkpoint, never half a line. A job killed for stalling
gets a line of its own for the time its segment did not record (`record_lost`, written by whoever killed it).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.files import write_text_atomic

LEDGER = "ledger.jsonl"


@dataclass
class Segment:
    """This call's line of `<run_dir>/ledger.jsonl`, kept current by `record`."""

    run_dir: Path
    from_step: int
    device: str  # "cuda" | "cpu"
    threads: int  # intra-op threads of a CPU training (torch.get_num_threads())
    devices: int = 1  # ranks of the training (train.devices)
    main: bool = True  # rank 0, the only one that writes the line
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
        share = float(os.environ.get("GPU_SHARE", 1)) if self.device == "cuda" else self.threads
        share *= self.devices
        return {"from_step": self.from_step, "to_step": to_step, "iters": to_step - self.from_step, "wall_s": round(wall, 3),
                "device": self.device, "devices": self.devices, "device_s": round(wall * share, 3), "share": share,
                "pretrain": self.pretrain, "pretrain_iters": self.pretrain_iters, "pretrain_s": round(self.pretrain_s, 3)}  # fmt: skip

    def record(self, to_step: int) -> None:
        """Rewrite the ledger with this call's line as of GAN step `to_step` (rank 0 of several only)."""
        if not self.main:
            return
        write_text_atomic(self.run_dir / LEDGER, self.earlier + json.dumps(self.line(to_step)) + "\n")


def read(run_dir: Path) -> list[dict[str, Any]]:
    """The ledger lines of a run folder, in the order they were written ([] without a ledger)."""
    path = Path(run_dir) / LEDGER
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def record_lost(run_dir: Path, since: int, held_s: float, tag: str) -> None:
    """A job that ran `held_s` seconds was killed (it stalled) and its own line (the ledger's lines after the
    first `since`) recorded only part of that: add a line of no iterations for the rest, at the rate (`share`)
    and step of the folder's last line (1 device-second per second, step 0, device unknown without one). Written
    once per `tag` (the job's launch token): calling again adds nothing."""
    lines = read(run_dir)
    if any(line.get("lost") == tag for line in lines):
        return
    last: dict[str, Any] = lines[-1] if lines else {"to_step": 0, "device": None, "devices": 1, "share": 1.0}
    share = last.get("share") or last["device_s"] / max(last["wall_s"], 1e-9)  # lines older than `share`
    wall = max(0.0, held_s - sum(line["wall_s"] for line in lines[since:]))
    line = {"from_step": last["to_step"], "to_step": last["to_step"], "iters": 0, "wall_s": round(wall, 3),
            "device": last["device"], "devices": last["devices"], "device_s": round(wall * share, 3), "share": share,
            "pretrain": "none", "pretrain_iters": 0, "pretrain_s": 0.0, "lost": tag}  # fmt: skip
    write_text_atomic(run_dir / LEDGER, "".join(json.dumps(x) + "\n" for x in [*lines, line]))
