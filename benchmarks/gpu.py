"""The GPU path measured in one run (issue 21): precision and layout variants of a GAN step, packed proxy
trials on one GPU, and one training on several GPUs (DDP). Prints figures and ratios; asserts nothing.

    python benchmarks/gpu.py [--steps 20] [--warmup 5] [--rounds 3] [--pack 4] [--no-compile]
    python benchmarks/gpu.py --cpu        # the same code at smoke shapes on this CPU: a check, not figures

1. Step variants, for ESRGAN-DP (RRDBNet-23, the 128x128 VGG discriminator, VGG19 conv5_4 and ResNet-50 to
   beta3_6) and the SRGAN-DP proxy (SRResNet-16, same losses), both at batch 16 and 128x128 HR patches: fp32,
   TF32, bf16 autocast (`train.amp`), each +/- channels_last (`train.channels_last`), and bf16 + channels_last
   +/- torch.compile. Variants are measured interleaved (round-robin, `--rounds` times, the best round kept)
   so that clock and thermal drift hits all alike. Per variant: iterations/s, images/s, peak memory of the step;
   ratio = its step time / fp32's (goal: bf16 + channels_last <= 0.5).
2. Packing: 1..`--pack` proxy trials as separate processes sharing the GPU (what `executor.trials_per_gpu`
   does), each timing the same number of steps after a common start, against one process doing them one
   after another: ratio = packed wall / (n x one's wall) (goal: 4 packed <= 0.5).
3. DDP: the proxy on 1..N GPUs at the global batch 16 (`train.devices`, ranks launched by
   torch.distributed.run's agent as `train` does): images/s and speed-up over one GPU (goal: 2 GPUs >= 1.8x).
   Skipped with fewer than two GPUs.

Random extractor weights (speed does not depend on them), synthetic batches (no data loading), validation
excluded; one intra-op CPU thread. Without CUDA (and without --cpu) it prints "no GPU: skipped".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn

from trainer import distributed
from trainer.config import build_config
from trainer.losses import DualPerceptualLoss
from trainer.train import Gan

BATCH, HR = 16, 128
NETS = {"esrgan-dp": {"arch": "esrgan"}, "srgan-dp proxy": {"arch": "srgan"}}


@dataclass(frozen=True)
class Variant:
    name: str
    tf32: bool = False
    amp: bool = False
    channels_last: bool = False
    compile: bool = False


VARIANTS = [
    Variant("fp32"),
    Variant("fp32 + channels_last", channels_last=True),
    Variant("tf32", tf32=True),
    Variant("tf32 + channels_last", tf32=True, channels_last=True),
    Variant("bf16", amp=True),
    Variant("bf16 + channels_last", amp=True, channels_last=True),
    Variant("bf16 + channels_last + compile", amp=True, channels_last=True, compile=True),
]


def config(net: str, variant: Variant, device: torch.device, batch: int = BATCH, hr: int = HR, devices: int = 1):
    small = {"model.num_blocks": 1} if device.type == "cpu" else {}  # --cpu: a check of the code, not figures
    return build_config(
        {
            **NETS[net],
            **small,
            "mu": 0.5,
            "beta": "beta3_6",
            "weights": "random",
            "data.batch_size": batch,
            "data.hr_patch": hr,
            "train.device": device.type,
            "train.amp": variant.amp,
            "train.channels_last": variant.channels_last,
            "train.devices": devices,
        }
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


class Bench:
    """One network and variant: its GAN-stage state and a fixed synthetic batch."""

    def __init__(self, net: str, variant: Variant, device: torch.device, batch: int, hr: int, devices: int = 1):
        self.variant, self.device = variant, device
        cfg = config(net, variant, device, batch, hr, devices)
        self.gan = Gan.build(cfg, device)
        if variant.compile:
            self.gan.g_run = cast(nn.Module, torch.compile(self.gan.g_run))
            self.gan.d_run = cast(nn.Module, torch.compile(self.gan.d_run))
            self.gan.percep = cast(DualPerceptualLoss, torch.compile(self.gan.percep))
        per_rank = batch // devices
        self.hr = torch.rand(per_rank, 3, hr, hr, device=device)
        self.lr = torch.nn.functional.avg_pool2d(self.hr, cfg.upscale)

    def seconds_per_step(self, steps: int) -> tuple[float, int]:
        """Mean wall seconds of `steps` steps (one sync at the end) and the peak memory they reached (bytes)."""
        set_tf32(self.variant.tf32)
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t = time.perf_counter()
        for _ in range(steps):
            self.gan.step(self.lr, self.hr)
        sync(self.device)
        seconds = (time.perf_counter() - t) / steps
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else 0
        return seconds, peak


def variants_section(args: argparse.Namespace, device: torch.device, batch: int, hr: int) -> None:
    variants = [
        v
        for v in VARIANTS
        if (device.type == "cuda" or not (v.tf32 or v.compile)) and not (v.compile and args.no_compile)
    ]
    for net in NETS:
        print(f"\n{net}: batch {batch}, {hr}x{hr} HR patches, {args.steps} steps x {args.rounds} rounds (best round)")
        benches = {}
        for v in variants:
            benches[v] = Bench(net, v, device, batch, hr)
            benches[v].seconds_per_step(args.warmup)  # cuDNN autotuning, compilation, allocator
        best: dict[Variant, tuple[float, int]] = {}
        for _ in range(args.rounds):
            for v, bench in benches.items():  # interleaved: every variant once per round
                s, peak = bench.seconds_per_step(args.steps)
                if v not in best or s < best[v][0]:
                    best[v] = (s, max(peak, best.get(v, (0, 0))[1]))
        base = best[variants[0]][0]
        print(f"  {'variant':32s} {'it/s':>8s} {'images/s':>9s} {'peak GiB':>9s} {'step / fp32':>12s}")
        for v, (s, peak) in best.items():
            print(f"  {v.name:32s} {1 / s:8.2f} {batch / s:9.1f} {peak / 2**30:9.2f} {s / base:12.2f}")
        fast = [v for v in best if v.name == "bf16 + channels_last"]
        if fast:
            print(f"  bf16 + channels_last / fp32 = {best[fast[0]][0] / base:.2f} (goal <= 0.5)")
        del benches
        if device.type == "cuda":
            torch.cuda.empty_cache()


def pack_worker(args: argparse.Namespace) -> None:
    """One packed trial: warm up, say so, wait for the common start, time the steps, print the seconds."""
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    batch, hr = shapes(args, device)
    bench = Bench("srgan-dp proxy", Variant("fp32"), device, batch, hr)
    bench.seconds_per_step(args.warmup)
    Path(args.worker, f"ready.{os.getpid()}").touch()
    while not Path(args.worker, "go").exists():
        time.sleep(0.005)
    s, _ = bench.seconds_per_step(args.steps)
    print(json.dumps({"wall_s": s * args.steps}))


def packing_section(args: argparse.Namespace, device: torch.device) -> None:
    print(
        f"\npacking: srgan-dp proxy trials as processes sharing one {'GPU' if device.type == 'cuda' else 'CPU'}, "
        f"{args.steps} steps each after a common start"
    )
    walls = {}
    for n in range(1, args.pack + 1):
        with tempfile.TemporaryDirectory() as folder:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                folder,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
            ]
            procs = [
                subprocess.Popen(cmd + (["--cpu"] if args.cpu else []), stdout=subprocess.PIPE, text=True)
                for _ in range(n)
            ]
            while len(list(Path(folder).glob("ready.*"))) < n and all(p.poll() is None for p in procs):
                time.sleep(0.01)
            Path(folder, "go").touch()
            outs = [p.communicate()[0] for p in procs]
            if any(p.returncode for p in procs):
                raise SystemExit(f"a packed worker failed: {outs}")
            walls[n] = max(json.loads(o.strip().splitlines()[-1])["wall_s"] for o in outs)
        ratio = walls[n] / (n * walls[1])
        goal = " (goal <= 0.5)" if n == 4 else ""
        print(
            f"  {n} packed: {walls[n]:.2f} s for {n} x {args.steps} steps; one after another {n * walls[1]:.2f} s; "
            f"packed / one after another = {ratio:.2f}{goal}"
        )


def _ddp_rank(steps: int, warmup: int, devices: int) -> float:
    """One rank of the DDP section: images per second of the whole training (rank 0's figure)."""
    device = distributed.rank_device(torch.device("cuda"))
    distributed.init(devices, "cuda")
    try:
        bench = Bench("srgan-dp proxy", Variant("fp32"), device, BATCH, HR, devices)
        bench.seconds_per_step(warmup)
        s, _ = bench.seconds_per_step(steps)
        return BATCH / s
    finally:
        distributed.close()


def ddp_section(args: argparse.Namespace) -> None:
    n_gpus = torch.cuda.device_count()
    if n_gpus < 2:
        print(f"\nDDP: {n_gpus} GPU here: skipped (needs two or more)")
        return
    counts = [n for n in range(1, n_gpus + 1) if BATCH % n == 0]  # train.devices must split the batch
    print(f"\nDDP: srgan-dp proxy, global batch {BATCH} split over {counts} GPUs (train.devices)")
    speeds = {}
    for n in counts:
        speeds[n] = distributed.launch(_ddp_rank, [args.steps, args.warmup, n], n) if n > 1 else _single(args)
        goal = " (goal >= 1.8)" if n == 2 else ""
        print(f"  {n} GPU(s): {speeds[n]:.1f} images/s, {speeds[n] / speeds[1]:.2f}x one GPU{goal}")


def _single(args: argparse.Namespace) -> float:
    bench = Bench("srgan-dp proxy", Variant("fp32"), torch.device("cuda"), BATCH, HR)
    bench.seconds_per_step(args.warmup)
    return BATCH / bench.seconds_per_step(args.steps)[0]


def shapes(args: argparse.Namespace, device: torch.device) -> tuple[int, int]:
    """The paper's batch and patch on a GPU; the smoke preset's (and one block per generator) on the CPU (`--cpu`)."""
    return (BATCH, HR) if device.type == "cuda" else (2, 32)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pack", type=int, default=4)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument(
        "--cpu", action="store_true", help="run the code at smoke shapes on the CPU (a check, not a measurement)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.worker:
        pack_worker(args)
        return
    if not torch.cuda.is_available() and not args.cpu:
        print("no GPU: skipped")
        return
    device = torch.device("cpu" if args.cpu else "cuda")
    print(
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else "CPU (--cpu: smoke shapes, a check of the code, not figures)"
    )
    batch, hr = shapes(args, device)
    variants_section(args, device, batch, hr)
    packing_section(args, device)
    if device.type == "cuda":
        ddp_section(args)


if __name__ == "__main__":
    main(sys.argv[1:])
