"""Files that must never be half-written or trusted blindly: atomic writes, safe checkpoint loading,
RNG state capture, the cross-process lock on the shared pre-training cache, and `load_generator`."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from trainer.config import config_from_dict
from trainer.errors import UserError
from trainer.nets import build_generator


def _atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through a temporary file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save `obj` (tensors, dicts, lists, numbers, strings only) atomically."""
    _atomic(path, lambda f: torch.save(obj, f))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1) + "\n")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU with `weights_only=True` (no arbitrary unpickling)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no such checkpoint") from None
    except Exception as e:  # truncated, corrupt or not a torch file: torch raises many types here
        raise UserError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e}); delete it to start over") from None
    if not isinstance(ckpt, dict) or "g" not in ckpt or "config" not in ckpt:
        raise UserError(f"{path}: not a trainer checkpoint (expected a dict with 'g' and 'config')")
    return ckpt


def load_generator(path: str | Path) -> nn.Module:
    """The generator of a checkpoint (its EMA weights when it has them), built from the checkpoint's own
    config and in eval mode: for evaluation and promotion."""
    ckpt = load_checkpoint(Path(path))
    g = build_generator(config_from_dict(ckpt["config"]))
    g.load_state_dict(ckpt.get("ema") or ckpt["g"])
    return g.eval()


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock (flock) held for the block; other processes wait. Works on local disks and
    on shared file systems that support flock (NFSv4, Lustre mounted with -o flock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
