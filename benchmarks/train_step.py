"""GAN-stage step time of SRGAN with the VGG loss alone vs the DP loss, measured side by side in one run.

Targets (issue 3): a DP step costs at most 1.3x a VGG-only step; building both extractors takes < 1 s;
Python-side overhead per step (CPU time outside ATen operators) is < 5% of the step on CPU.
Prints the measurements and ratios; it asserts nothing.

    python benchmarks/train_step.py [--steps 5] [--proxy-batch 16] [--weights imagenet|random]

Shapes: smoke (batch 2, HR 32x32) and proxy (batch 16, HR 128x128). On a CPU the proxy batch defaults to
4 to keep the run short (the ratio is what matters); the output says which batch was used.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from trainer import weight_files
from trainer.config import build_config
from trainer.losses import ResNetStages, vgg_extractor
from trainer.train import Gan, pick_device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_seconds(weights: str) -> float:
    """Time to build the VGG trunk and the deepest ResNet extractor (beta4_3), best of three."""
    times = []
    for _ in range(3):
        t = time.perf_counter()
        vgg_extractor(weights), ResNetStages(weights, "beta4_3")
        times.append(time.perf_counter() - t)
    return min(times)


def make_gan(
    preset: str, mu: float, batch: int, args: argparse.Namespace, device: torch.device
) -> tuple[Gan, torch.Tensor, torch.Tensor]:
    """A GAN-stage state for SRGAN with the DP loss (beta3_6) or, for mu=inf, the VGG loss alone."""
    cfg = build_config(
        {
            "preset": preset,
            "arch": "srgan",
            "mu": mu,
            "beta": "beta3_6",
            "weights": args.weights,
            "data.batch_size": batch,
            "train.device": device.type,
            "train.channels_last": args.channels_last,
        }
    )
    gan = Gan.build(cfg, device)
    hr = torch.rand(batch, 3, cfg.data.hr_patch, cfg.data.hr_patch, device=device)
    lr = torch.nn.functional.avg_pool2d(hr, cfg.upscale)
    return gan, lr, hr


def step_seconds(gan: Gan, lr: torch.Tensor, hr: torch.Tensor, steps: int) -> float:
    sync(lr.device)
    t = time.perf_counter()
    for _ in range(steps):
        gan.step(lr, hr)
    sync(lr.device)
    return (time.perf_counter() - t) / steps


def python_overhead(gan: Gan, lr: torch.Tensor, hr: torch.Tensor, steps: int) -> float:
    """Fraction of a step's wall time spent outside ATen operators (Python, autograd and optimiser
    bookkeeping), from the PyTorch profiler; the profiler's own cost makes this an upper bound. CPU only."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            gan.step(lr, hr)
        wall = time.perf_counter() - t
    in_ops = sum(e.cpu_time_total for e in prof.events() if is_outermost_aten(e)) / 1e6
    return max(0.0, 1 - in_ops / wall)


def is_outermost_aten(event) -> bool:
    """An ATen operator not nested in another one (backward ops sit under autograd engine events)."""
    if not event.name.startswith("aten::"):
        return False
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return False
        parent = parent.cpu_parent
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating VGG/DP rounds; the fastest is reported")
    ap.add_argument("--proxy-batch", type=int, default=0, help="proxy batch (default 16 on CUDA, 4 on CPU)")
    ap.add_argument("--weights", default="", help="extractor weights (default imagenet if present, else random)")
    ap.add_argument("--channels-last", action="store_true", help="train.channels_last=true (helps mkldnn on CPU)")
    args = ap.parse_args()
    device = pick_device(build_config())
    args.weights = args.weights or ("random" if weight_files.missing(["vgg19", "resnet50"]) else "imagenet")
    proxy_batch = args.proxy_batch or (16 if device.type == "cuda" else 4)
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} weights={args.weights} "
        f"channels_last={args.channels_last}"
    )

    build = build_seconds(args.weights)
    print(f"build VGG19[:35] + ResNet-50 (to layer4): {build:.3f} s  (target < 1 s)")

    for preset, batch in (("smoke", 2), ("proxy", proxy_batch)):
        setups = {name: make_gan(preset, mu, batch, args, device) for name, mu in (("vgg", math.inf), ("dp", 0.5))}
        for gan, lr, hr in setups.values():
            step_seconds(gan, lr, hr, 2)  # warm-up (allocator, cudnn autotune)
        times: dict[str, list[float]] = {"vgg": [], "dp": []}
        for _ in range(args.rounds):
            for name, (gan, lr, hr) in setups.items():
                times[name].append(step_seconds(gan, lr, hr, args.steps))
        vgg, dp = min(times["vgg"]), min(times["dp"])
        hr_size = setups["dp"][2].shape[-1]
        print(
            f"{preset:5s} batch {batch:2d} HR {hr_size}: VGG-only {vgg * 1e3:8.1f} ms/step   "
            f"DP {dp * 1e3:8.1f} ms/step   DP/VGG = {dp / vgg:.2f}  (target <= 1.3)"
        )
        if device.type == "cpu":
            overhead = python_overhead(*setups["dp"], args.steps)
            print(f"{preset:5s} DP step: {overhead:.1%} of wall time outside ATen ops  (target < 5%)")


if __name__ == "__main__":
    main()
