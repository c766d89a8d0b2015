"""The prepared-data cache on a synthetic DIV2K-shaped set (issue 10), measured side by side in one run.

Makes `--images` random 2040x1356 PNGs, then prints: the sub-image count against the formula (40 per image,
the paper's rule), prepare time with 1 process and with every core (target >= 1.7x on 2 cores), and, in a
fresh "second trial" process on the prepared set: time to the first batch (target <= 5 s), batches per
second at 16 x 128^2 on one thread (target >= 200 patches/s), and its memory growth next to the prepared
set's size on disk (target: private memory <= 10 % of it). Asserts nothing.

    python benchmarks/data_prep.py [--images 40] [--batches 200] [--workers N] [--rounds 2] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.config import build_config
from trainer.data import prepare_set
from trainer.image_sets import window_starts

HEIGHT, WIDTH = 1356, 2040

TRIAL = """
import json, sys, time
t0 = time.perf_counter()
import torch
from trainer.config import build_config
from trainer.data import TrainBatches
torch.set_num_threads(1)

def mem():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile", "VmHWM")}

root, cache, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = build_config({"data.root": root, "data.train_sets": ["DIV2K"], "data.cache": cache})
imported, before = time.perf_counter(), mem()
batches = TrainBatches(cfg, cache)
next(batches)
first = time.perf_counter()
for _ in range(n):
    next(batches)
done = time.perf_counter()
print(json.dumps({"import_s": imported - t0, "first_batch_s": first - imported, "batches_per_s": n / (done - first),
                  "before": before, "after": mem(), "subimages": len(batches)}))
"""


def make_images(folder: Path, n: int) -> None:
    """`n` DIV2K-sized images: smooth gradients plus noise (so PNG and bicubic see real-looking content)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    for i in range(n):
        base = (np.sin(x / (30 + 7 * i)) + np.cos(y / (40 + 3 * i))) * 60 + 128
        img = base[..., None] + rng.normal(0, 12, (HEIGHT, WIDTH, 3))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i + 1:04d}.png", compress_level=1)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the pool's workers)."""
    return sum(
        getattr(resource.getrusage(who), f)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for f in ("ru_utime", "ru_stime")
    )


def prepare_seconds(root: Path, cache: Path, workers: int) -> tuple[float, float, dict]:
    """Wall seconds, CPU seconds and the manifest of one prepare from scratch."""
    cfg = build_config({"data.root": str(root), "data.train_sets": ["DIV2K"], "data.cache": str(cache)})
    t, cpu = time.perf_counter(), cpu_seconds()
    prepared = prepare_set(cfg, "DIV2K", cache, workers=workers)
    return time.perf_counter() - t, cpu_seconds() - cpu, prepared.manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=40, help="synthetic 2040x1356 images")
    ap.add_argument("--batches", type=int, default=200, help="batches timed in the second trial")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="processes for 'all cores'")
    ap.add_argument("--rounds", type=int, default=2, help="prepare timings alternate 1 and all cores; best of each")
    ap.add_argument("--dir", type=Path, default=None, help="working folder, kept (default: a temporary one, removed)")
    args = ap.parse_args()
    if args.dir is not None:
        measure(args, args.dir)
        return
    with tempfile.TemporaryDirectory(prefix="data_prep.") as tmp:  # about 1 GB per 40 images
        measure(args, Path(tmp))


def measure(args: argparse.Namespace, work: Path) -> None:
    root = work / "data"
    make_images(root / "DIV2K", args.images)
    print(f"{args.images} synthetic {WIDTH}x{HEIGHT} images in {root}; {args.workers} cores for 'all'")

    per_image = len(window_starts(HEIGHT, 480, 240)) * len(window_starts(WIDTH, 480, 240))
    times: dict[int, list[tuple[float, float]]] = {1: [], args.workers: []}
    for _r in range(args.rounds):  # alternating, best of each: other load on a shared machine hits both alike
        for workers in times:
            cache = work / f"cache-{workers}"
            shutil.rmtree(cache, ignore_errors=True)
            wall, cpu, manifest = prepare_seconds(root, cache, workers)
            times[workers].append((wall, cpu))
    (one_s, one_cpu), (all_s, all_cpu) = min(times[1]), min(times[args.workers])
    print(
        f"count: {manifest['subimages']} sub-images, formula {args.images} x {per_image} = {args.images * per_image}"
        f"  (paper: 40 for a 2040x1356 image, 32,592 for DIV2K's 800)"
    )
    print(
        f"prepare: 1 process {one_s:.1f} s ({one_s / manifest['subimages'] * 1e3:.0f} ms per sub-image), "
        f"{args.workers} processes {all_s:.1f} s: speed-up {one_s / all_s:.2f}x  (target >= 1.7x on 2 cores); "
        f"cores they got (CPU s / wall s): {one_cpu / one_s:.2f} and {all_cpu / all_s:.2f}; "
        f"below 1 and {args.workers} = other load on the machine"
    )

    out = subprocess.run(
        [sys.executable, "-c", TRIAL, str(root), str(work / f"cache-{args.workers}"), str(args.batches)],
        capture_output=True,
        text=True,
        check=True,
    )
    trial = json.loads(out.stdout)
    size = manifest["bytes"]
    grow = {k: trial["after"][k] - trial["before"][k] for k in trial["before"]}
    print(
        f"second trial: imports {trial['import_s']:.2f} s, then first batch after {trial['first_batch_s']:.2f} s "
        f"(target <= 5 s)"
    )
    print(
        f"batches: {trial['batches_per_s']:.1f} batches/s of 16 x 128^2 on one thread = "
        f"{16 * trial['batches_per_s']:.0f} patches/s  (target >= 200)"
    )
    print(
        f"memory after {args.batches + 1} batches: private (RssAnon) +{grow['RssAnon'] / 2**20:.1f} MiB = "
        f"{grow['RssAnon'] / size:.2%} of the prepared set ({size / 2**20:.0f} MiB on disk; target <= 10 %); "
        f"mapped file pages (RssFile, the shared page cache) +{grow['RssFile'] / 2**20:.0f} MiB; "
        f"peak RSS (VmHWM) {trial['after']['VmHWM'] / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    main()
