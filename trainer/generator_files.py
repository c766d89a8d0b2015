"""Generator weights files: reading a released model for `model.init_from` and writing an exported one.

Reading (`read_state`, `init_state`): a `.safetensors` file, or a `.pth`/`.pt` loaded with `weights_only=True`
(a plain state dict, BasicSR's `{"params": ...}` / `{"params_ema": ...}` wrapper, or a trainer checkpoint's
`g`/`ema`). Key names of BasicSR's MSRResNet / RRDBNet and of the ESRGAN repository's networks (e.g.
`RRDB_PSNR_x4.pth`, `MSRResNet_x4.pth`) are mapped to this package's (`to_ours`); anything that still does
not fit the configured generator is a one-line error naming what differs.

Writing (`save_export`): the generator as safetensors with a JSON card in the file's metadata
(`CARD_KEY`): architecture, config, data hash, metrics, weights used, commit; `read_card` reads it back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.config import Config
from trainer.errors import UserError
from trainer.files import sha256_file, write_bytes_atomic

CARD_KEY = "dp_sweeper.card"
WRAPPERS = ("params_ema", "params", "ema", "g", "state_dict")  # where a .pth keeps its generator, first found wins

Rule = tuple[str, str | Callable[[re.Match[str]], str]]
# (pattern, replacement) applied in order to each key; keys already in this package's names match none.
RULES: dict[str, list[Rule]] = {
    "srgan": [  # BasicSR MSRResNet: body.N.conv1/conv2, upconv1/2; ESRGAN repo (mmsr): recon_trunk, HRconv
        (r"^recon_trunk\.", "body."),
        (r"^body\.(\d+)\.conv1\.", r"body.\1.body.0."),
        (r"^body\.(\d+)\.conv2\.", r"body.\1.body.3."),
        (r"^upconv1\.", "upsample.0."),
        (r"^upconv2\.", "upsample.3."),
        (r"^HRconv\.", "conv_hr."),
    ],
    "esrgan": [  # BasicSR RRDBNet: body.N.rdbK.convM, conv_body, conv_up1/2; ESRGAN repo: RRDB_trunk, RDBk, trunk_conv, upconv, HRconv
        (r"^RRDB_trunk\.", "body."),
        (
            r"^body\.(\d+)\.(?:rdb|RDB)(\d)\.conv(\d)\.",
            lambda m: f"body.{m[1]}.blocks.{int(m[2]) - 1}.convs.{int(m[3]) - 1}.",
        ),
        (r"^trunk_conv\.", "conv_body."),
        (r"^(?:conv_up|upconv)(\d)\.", lambda m: f"conv_up.{int(m[1]) - 1}."),
        (r"^HRconv\.", "conv_hr."),
    ],
}


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a generator weights file (see the module docstring), on the CPU, under the file's keys."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a zip/safetensors, or a pickle with code in it
        detail = " ".join(str(e).split())[:160]
        raise UserError(f"{path}: not a readable .pth (weights_only) or .safetensors weights file ({detail})") from None
    while isinstance(state, dict) and (key := next((k for k in WRAPPERS if isinstance(state.get(k), dict)), None)):
        state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(
            f"{path}: expected a state dict of generator weights (or BasicSR's params/params_ema), found {type(state).__name__}"
        )
    return state


def to_ours(state: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """`state` with BasicSR's or the ESRGAN repository's key names mapped to this package's `arch` generator."""
    out = {}
    for key, value in state.items():
        new = key.removeprefix("module.")  # saved from a DataParallel/DistributedDataParallel wrapper
        for pattern, repl in RULES[arch]:
            new = re.sub(pattern, repl, new)
        out[new] = value
    return out


def load_into(g: nn.Module, state: dict[str, torch.Tensor], what: str, cfg: Config) -> None:
    """Copy `state` (already in this package's names) into `g`, or a one-line UserError saying how it differs."""
    mine = g.state_dict()
    missing = [k for k in mine if k not in state]
    unexpected = [k for k in state if k not in mine]
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in mine.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        m = cfg.model
        parts = [
            f"{len(missing)} missing (e.g. {', '.join(missing[:2])})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:2])})" if unexpected else "",
            f"{len(shapes)} of another shape (e.g. {shapes[0]})" if shapes else "",
        ]
        raise UserError(
            f"{what}: these weights do not fit arch={cfg.arch} (x{cfg.upscale}, model.num_feat={m.num_feat}, "
            f"model.num_blocks={m.num_blocks or 'default'}): {'; '.join(p for p in parts if p)}; "
            "set arch/model.* to the file's network (BasicSR and ESRGAN key names are understood)"
        )
    g.load_state_dict(state)


def init_state(cfg: Config, g: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """`model.init_from`'s weights, checked against the generator `g`, and how to record them
    ("file:<absolute path> sha256:<first 16 hex digits>")."""
    path = Path(cfg.model.init_from).expanduser().resolve()
    state = to_ours(read_state(path), cfg.arch)
    load_into(g, state, f"model.init_from={cfg.model.init_from}", cfg)
    return state, f"file:{path} sha256:{sha256_file(path)[:16]}"


def save_export(path: Path, state: dict[str, torch.Tensor], card: dict[str, Any]) -> None:
    """Write `state` as safetensors with `card` (JSON) in its metadata, atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    data = save(tensors, metadata={CARD_KEY: json.dumps(card, sort_keys=True, default=str)})
    write_bytes_atomic(Path(path), data)


def read_card(path: Path) -> dict[str, Any]:
    """The JSON card of a file written by `save_export`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if CARD_KEY not in meta:
        raise UserError(f"{path}: a safetensors file without a dp-sweeper card (metadata key {CARD_KEY})")
    return json.loads(meta[CARD_KEY])
