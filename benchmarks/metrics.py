"""Throughput of the metrics and of the LR degradation: the trainer's torch code vs a straightforward NumPy
implementation of the same MATLAB conventions, both one image at a time, timed side by side in this run
(interleaved repeats, best of each).

    .venv/bin/python benchmarks/metrics.py [--data-root ../shared/data] [--repeats 3] [--threads N]

Both sides use one core by default. On a machine whose cores are busy with other work, torch's intra-op
threads (--threads 0) wait on each other and can make the torch side several times slower.

Work measured:
- PSNR + SSIM on Y of the 100 BSD100 images (x4 bicubic SR vs HR, 4-pixel border);
- MATLAB bicubic degradation (x1/4) of the 291 training images (T91 + BSD200).
The NumPy baseline is vectorised within an image (gathered taps, sliding-window filters), and its results
are checked against the trainer's before timing.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from trainer.data import load_set
from trainer.imresize import contributions, degrade, imresize, modcrop, output_length
from trainer.metrics import Y_WEIGHTS, psnr_y_batch, ssim_y_batch

# ---------------------------------------------------------------- NumPy baseline, one image at a time


def np_resize(img: np.ndarray, scale: float) -> np.ndarray:
    """uint8 (H, W, C) MATLAB bicubic, rows then columns, rounded after each pass."""
    out = img.astype(np.float64)
    for axis in (0, 1):
        n = out.shape[axis]
        idx, w = (t.numpy() for t in contributions(n, output_length(n, scale), scale))
        taps = np.take(out, idx, axis=axis)  # axis -> (out, taps)
        w = w.reshape(w.shape + (1,) * (out.ndim - 1 - axis))
        out = np.clip(np.floor((taps * w).sum(axis=axis + 1) + 0.5), 0, 255)
    return out.astype(np.uint8)


def np_y(img: np.ndarray) -> np.ndarray:
    if img.shape[2] == 1:
        return img[..., 0].astype(np.float64)
    r, g, b = np.moveaxis(img.astype(np.float64), 2, 0)
    return np.floor(r * Y_WEIGHTS[0] + g * Y_WEIGHTS[1] + b * Y_WEIGHTS[2] + 16 + 0.5)


def np_psnr_ssim(sr: np.ndarray, hr: np.ndarray, border: int) -> tuple[float, float]:
    x, y = np_y(sr)[border:-border, border:-border], np_y(hr)[border:-border, border:-border]
    psnr = 10 * np.log10(255**2 / np.mean((x - y) ** 2))
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    f = lambda a: np.einsum("ijkl,kl->ij", sliding_window_view(a, (11, 11)), win)  # noqa: E731
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    ssim = np.mean(((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2)))
    return float(psnr), float(ssim)


# ---------------------------------------------------------------- trainer


def torch_metrics(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """One image at a time: on a CPU, stacking same-size images into batches is slower (cache misses)."""
    return [float(f(sr, hr, 4)) for sr, hr in pairs for f in (psnr_y_batch, ssim_y_batch)]


# ---------------------------------------------------------------- timing


def best_of(repeats: int, fns: dict[str, Callable[[], object]]) -> dict[str, float]:
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():  # interleaved, so both see the same machine load
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def report(title: str, n: int, times: dict[str, float]) -> None:
    t_torch, t_np = times["torch"], times["numpy"]
    print(f"{title}: {n} images")
    print(
        f"  trainer (torch): {n / t_torch:8.1f} images/s   numpy per image: {n / t_np:8.1f} images/s   "
        f"speed-up {t_np / t_torch:.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1, like NumPy here; 0 = torch's default)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) vs NumPy on one core, CPU")

    hrs = [modcrop(img, 4) for _, img in load_set(args.data_root, "BSD100")]
    pairs = [(imresize(degrade(hr, 4), 4), hr) for hr in hrs]
    np_pairs = [(sr.permute(1, 2, 0).numpy(), hr.permute(1, 2, 0).numpy()) for sr, hr in pairs]
    expected = [v for sr, hr in np_pairs for v in np_psnr_ssim(sr, hr, 4)]
    assert np.allclose(torch_metrics(pairs), expected, rtol=0, atol=1e-9), "metrics disagree"
    times = best_of(
        args.repeats,
        {
            "torch": lambda: torch_metrics(pairs),
            "numpy": lambda: [np_psnr_ssim(sr, hr, 4) for sr, hr in np_pairs],
        },
    )
    report("PSNR + SSIM (Y, x4 bicubic) on BSD100", len(pairs), times)

    train = [img for name in ("T91", "BSD200") for _, img in load_set(args.data_root, name)]
    np_train = [modcrop(img, 4).permute(1, 2, 0).numpy() for img in train]
    for img, arr in zip(train[:5], np_train[:5]):
        assert np.array_equal(degrade(img, 4).permute(1, 2, 0).numpy(), np_resize(arr, 0.25)), "imresize disagrees"
    times = best_of(
        args.repeats,
        {
            "torch": lambda: [degrade(img, 4) for img in train],
            "numpy": lambda: [np_resize(a, 0.25) for a in np_train],
        },
    )
    report("MATLAB bicubic x1/4 degradation of T91 + BSD200", len(train), times)


if __name__ == "__main__":
    main()
