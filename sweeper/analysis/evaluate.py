"""`sweeper evaluate`: score bicubic upscaling or a generator checkpoint on benchmark sets.

One CSV row per image (`set,image,psnr_y,ssim_y,lpips`, lpips empty when its weights are missing) and a
per-set mean table. LR images are MATLAB bicubic downscalings of the modcropped HR images; PSNR/SSIM are
on Y with `upscale` border pixels removed (section 4.1). "bicubic" upscales the LR with MATLAB's bicubic.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from trainer.checkpoint import load_generator
from trainer.data import ValImage, load_set, resolve_root
from trainer.errors import UserError
from trainer.files import write_text_atomic
from trainer.images import to_rgb
from trainer.imresize import degrade, imresize, modcrop
from trainer.metrics import LPIPSMetric, psnr_y, ssim_y
from trainer.train import score_image, super_resolve

COLUMNS = ("set", "image", "psnr_y", "ssim_y", "lpips")


def _generator(method: str, device: torch.device) -> torch.nn.Module | None:
    """None for "bicubic", else the checkpoint's generator on `device`."""
    if method == "bicubic":
        return None
    path = Path(method)
    if not path.is_file():
        raise UserError(f"method={method!r}: choose bicubic or a generator checkpoint file (e.g. run/ckpt/last.pt)")
    return load_generator(path).to(device)


def evaluate(method: str, root: Path, sets: list[str], upscale: int, use_lpips: bool) -> list[dict]:
    """One row dict per image of each set."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = _generator(method, device)
    lpips = LPIPSMetric(device) if use_lpips else None
    rows = []
    for set_name in sets:
        for name, img in load_set(root, set_name):
            hr = modcrop(img, upscale)
            lr = degrade(hr, upscale)
            if g is None:  # scored in uint8 with the channel count of the HR image, as MATLAB does
                sr_u8 = imresize(lr, upscale)
                psnr, ssim = psnr_y(sr_u8, hr, upscale), ssim_y(sr_u8, hr, upscale)
                sr = to_rgb(sr_u8).unsqueeze(0).to(device, torch.float32) / 255
            else:
                sr = super_resolve(g, to_rgb(lr), device)
                if sr.shape[-2:] != hr.shape[-2:]:
                    raise UserError(
                        f"{method}: turns a {tuple(lr.shape[-2:])} LR image into {tuple(sr.shape[-2:])}, "
                        f"not {tuple(hr.shape[-2:])}; pass the checkpoint's factor as --upscale"
                    )
                psnr, ssim = score_image(sr, ValImage(name, hr, to_rgb(lr)), upscale)
            lp = float(lpips(sr, to_rgb(hr).unsqueeze(0).float().div(255))[0]) if lpips and lpips.available else None
            rows.append({"set": set_name, "image": name, "psnr_y": psnr, "ssim_y": ssim, "lpips": lp})
    return rows


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "psnr_y": f"{r['psnr_y']:.6f}", "ssim_y": f"{r['ssim_y']:.6f}",
                         "lpips": "" if r["lpips"] is None else f"{r['lpips']:.6f}"})
    return buf.getvalue()


def mean_table(rows: list[dict], sets: list[str]) -> str:
    lines = [f"{'set':<10} {'images':>6} {'PSNR-Y':>8} {'SSIM-Y':>8} {'LPIPS':>8}"]
    for s in sets:
        sel = [r for r in rows if r["set"] == s]
        lp = [r["lpips"] for r in sel if r["lpips"] is not None]
        psnr, ssim = (sum(r[key] for r in sel) / len(sel) for key in ("psnr_y", "ssim_y"))
        lp_text = f"{sum(lp) / len(lp):8.4f}" if lp else f"{'n/a':>8}"
        lines.append(f"{s:<10} {len(sel):>6} {psnr:8.4f} {ssim:8.4f} {lp_text}")
    return "\n".join(lines)


def main(method: str, data_root: Path | None, sets: str, out: Path | None, upscale: int, use_lpips: bool) -> None:
    """The `sweeper evaluate` command."""
    if upscale not in (2, 3, 4):
        raise UserError(f"--upscale={upscale} is not supported; choose 2, 3 or 4")
    names = [s.strip() for s in sets.split(",") if s.strip()]
    if not names:
        raise UserError(f"--sets={sets!r}: give comma-separated set names, e.g. Set5,Set14,BSD100")
    root = resolve_root(data_root)
    rows = evaluate(method, root, names, upscale, use_lpips)
    if out is not None:
        write_text_atomic(Path(out), to_csv(rows))
    print(f"{method} x{upscale} on {root}")
    print(mean_table(rows, names))
    if out is not None:
        print(f"per-image results: {out}")
