"""Trials packed on one GPU (issue 12 goal): 4 SRGAN proxy trials with `executor.trials_per_gpu=4` against the
same 4 one after another (`executor.trials_per_gpu=1 executor.n_jobs=1`). Goal: packed wall time <= 0.5x.

Each run is a real `sweeper run` of a 4-point mu study in a fresh workspace, at the proxy preset's shapes
(SRGAN, batch 16, 128x128 patches) on the embedded images, random extractor weights, no pre-training, a
few hundred GAN iterations. Prints each run's wall time, its GPU-seconds from the cost ledgers and the ratio.
Without a GPU it prints "no GPU: skipped".

    python benchmarks/packing.py [key=value ...]      e.g. train.iters=500
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STUDY = """description: "packing benchmark: four mu values"
config: {arch: srgan, beta: beta1_3}
stages:
  - name: mu
    grid: {mu: [0.5, 1, 10, 20]}
"""
SHAPES = ["preset=proxy", "weights=random", "train.from_scratch=true", "train.iters=300", "train.val_every=300", "train.ckpt_every=300",
          "train.milestones=[100000]", "data.train_sets=[train]", "data.val_sets=[Set5]", "data.subimage_size=128",
          "data.val_max_images=1", "data.val_crop=128", "select_by=psnr"]  # fmt: skip
RUNS = {
    "one after another": ["executor.n_jobs=1", "executor.trials_per_gpu=1"],
    "packed 4 per GPU": ["executor.trials_per_gpu=4"],
}


def main(argv: list[str]) -> None:
    import torch

    if not torch.cuda.is_available():
        print("no GPU: skipped")
        return
    walls = {}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "studies").mkdir()
        (Path(tmp) / "studies" / "pack.yaml").write_text(STUDY)
        env = {**os.environ, "SWEEPER_STUDIES": str(Path(tmp) / "studies"), "TORCH_HOME": str(Path(tmp) / "torch_home")}
        for name, options in RUNS.items():
            ws = Path(tmp) / name.replace(" ", "_")
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "sweeper.cli", "run", "study=pack", f"workspace={ws}", *SHAPES, *options, *argv],
                           env=env, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
            walls[name] = time.perf_counter() - t0
            status = subprocess.run([sys.executable, "-m", "sweeper.cli", "status", "study=pack", f"workspace={ws}", "--format", "json"],
                                    env=env, check=True, capture_output=True, text=True)  # fmt: skip
            cost = json.loads(status.stdout)["cost"][-1]
            print(
                f"{name}: {walls[name]:.1f} s wall, {cost['gan_iters']} GAN iterations, {cost['device_s']:.0f} {cost['unit']} in the ledgers"
            )
    seq, packed = walls.values()
    print(f"{torch.cuda.get_device_name()}: packed / one after another = {packed / seq:.2f} (goal <= 0.5)")


if __name__ == "__main__":
    main(sys.argv[1:])
