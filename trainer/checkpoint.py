"""Checkpoints: atomic saving, safe loading (`weights_only=True`), RNG state capture, `load_generator`."""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.config import config_from_dict
from trainer.errors import UserError
from trainer.files import atomic_write, check_space, no_space
from trainer.nets import build_generator

FINISHED = "finished"  # the `stage` of a finished run's checkpoint: its generator only (see save_generator)
SNAPSHOT = "snapshot"  # the `stage` of a generator kept every train.keep_every iterations


def snapshot_path(run_dir: Path, step: int) -> Path:
    """Where `train.keep_every` keeps the generator of iteration `step`."""
    return Path(run_dir) / "ckpt" / f"g_{step:07d}.pt"


def snapshot_steps(run_dir: Path) -> list[int]:
    """The iterations whose generator a run kept (`train.keep_every`), ascending."""
    return sorted(int(p.stem[2:]) for p in (Path(run_dir) / "ckpt").glob("g_*.pt") if p.stem[2:].isdigit())


def save_generator(path: Path, config: dict[str, Any], stage: str, step: int, g: dict[str, torch.Tensor]) -> None:
    """A generator-only checkpoint (what evaluation, export and promotion read), atomically. A finished run
    keeps only this (its EMA weights when kept): optimizer, discriminator, data and RNG state only serve a
    resume, a finished run never resumes, and they are most of the file (183 MB -> 6 MB for the smoke preset)."""
    save_atomic({"config": config, "stage": stage, "step": step, "g": g}, path)


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save `obj` (tensors, dicts, lists, numbers, strings only) atomically, after checking that its
    tensors' bytes fit on the file system. A disk that fills up during the write raises NoSpace, never torch's
    own message (`[enforce fail at inline_container.cc] unexpected pos ...`, which names no cause)."""
    need = tensor_bytes(obj)
    check_space(path.parent, need, "a checkpoint")

    def write(f: Any) -> None:
        try:
            torch.save(obj, f)
        except RuntimeError as e:  # torch's zip writer reports a short write (ENOSPC) this way
            if "unexpected pos" in str(e) or "file write failed" in str(e):
                raise no_space(path.parent, need, "a checkpoint") from None
            raise

    atomic_write(path, write)


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nest of dicts, lists and tuples: a checkpoint's size, less a few kB of pickle."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU with `weights_only=True` (no arbitrary unpickling)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no such checkpoint") from None
    except pickle.UnpicklingError:  # torch's message advises weights_only=False, which would run the file's code
        raise UserError(
            f"{path}: refused: it holds Python objects other than tensors and plain values, which could "
            "run code when loaded; only checkpoints written by this trainer are loaded"
        ) from None
    except Exception as e:  # truncated, corrupt or not a torch file: torch raises many types here
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(
            f"{path}: unreadable checkpoint ({type(e).__name__}: {first}); delete it to start over"
        ) from None
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
