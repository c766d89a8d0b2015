"""Image files <-> uint8 CHW tensors (PNG, JPEG, BMP).

Colour images come back as 3 channels and grayscale files as 1 channel, so metrics can use a grayscale
image as its Y channel directly (copying it to RGB first costs 20*log10(255/219) = 1.32 dB through the
BT.601 offset); `to_rgb` expands it where a network needs three channels. Alpha is dropped.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from trainer.files import atomic_write
from trainer.image_sets import read_pixels


def read_image(path: str | Path) -> torch.Tensor:
    """Read an 8-bit image file (`trainer.image_sets.read_pixels`) as a uint8 (C, H, W) tensor, C = 3 (colour)
    or 1 (grayscale)."""
    return torch.from_numpy(read_pixels(path)).permute(2, 0, 1).contiguous()


def to_rgb(img: torch.Tensor) -> torch.Tensor:
    """Expand a 1-channel (..., 1, H, W) image to 3 channels; 3-channel images are returned unchanged."""
    return img.expand(*img.shape[:-3], 3, *img.shape[-2:]) if img.shape[-3] == 1 else img


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """float [0, 1] -> uint8 (rounded, clipped); uint8 is returned unchanged."""
    if img.dtype == torch.uint8:
        return img
    return (img.detach().float() * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def write_image(path: str | Path, img: torch.Tensor) -> None:
    """Write a (C, H, W) uint8 or float [0, 1] tensor atomically (temporary file, then rename)."""
    path = Path(path)
    if img.dim() != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"write_image expects a (1|3, H, W) tensor, got shape {tuple(img.shape)}")
    arr = to_uint8(img).cpu().permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    atomic_write(path, lambda f: pil.save(f, format=fmt))
