"""The recipe table: every choice that shapes a result, the value in effect, the key that changes it, and
what the paper's text, the authors' released code (their ESRGAN-DP fork of BasicSR, its
`options/train/{SRGAN_DP,ESRGAN_DP}/*.yml`) and upstream BasicSR each do.

`sweeper recipe arch=srgan preset=paper [--format json]` prints it; docs/RECIPE.md is `document()`, and
tests/test_recipe.py fails when the two disagree. Where the paper's text and the authors' code disagree the
default follows the code that produced the tables, and the `note` column says so; the one exception is the DP
loss itself (`loss.variant=paper`, eqs. 8-9): the beta sweep the paper reports is defined by the text's
single-stage ResNet loss, which the released code (summed stages, beta3_6 and mu=0.5 fixed) cannot express.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml

from trainer.config import ARCHS, Config, build_config, flatten
from trainer.errors import UserError

FORMATS = ("markdown", "json")
TEXT_VS_CODE = "text and code disagree: the default follows the code"
COLUMNS = ("choice", "in effect", "key", "paper (text)", "authors' code", "BasicSR", "note")


@dataclass(frozen=True)
class Choice:
    """One row. `keys`: the config keys that change it (none: fixed in the code, `fixed` says how);
    `authors` and `basicsr` are one text, or one per arch where the SRGAN and ESRGAN sides differ."""

    name: str
    keys: tuple[str, ...]
    paper: str
    authors: str | dict[str, str]
    basicsr: str | dict[str, str]
    note: str = ""
    fixed: str = ""


CHOICES = (
    Choice(
        "GAN loss",
        ("loss.gan",),
        "RaGAN, eq. (3), for both",
        {"srgan": "standard GAN, BCE (SRGANModel, gan_type vanilla)", "esrgan": "RaGAN (ESRGANModel)"},
        {"srgan": "standard GAN (SRGANModel)", "esrgan": "RaGAN (ESRGANModel)"},
        "SRGAN proxy: " + TEXT_VS_CODE,
    ),
    Choice(
        "RaGAN means in D's loss",
        ("loss.ragan_detach",),
        "eq. (3); detaching not stated",
        "detached: two half terms, each with the other side's mean detached",
        "detached (ESRGANModel)",
        "used with loss.gan=ragan; false = the RaGAN paper's undetached form",
    ),
    Choice("adversarial weight eta", ("loss.adv_weight",), "5e-3", "5e-3", "5e-3"),
    Choice("pixel loss lambda", ("loss.pixel_weight",), "L1, 1e-2", "L1, 1e-2", "L1, 1e-2"),
    Choice("perceptual weight gamma", ("loss.perceptual_weight",), "1", "1", "1"),
    Choice(
        "generator skip",
        ("model.skip",),
        "not stated",
        {"srgan": "none (MSRResNet's bilinear skip commented out)", "esrgan": "none (RRDBNet)"},
        {"srgan": "bilinear (MSRResNet)", "esrgan": "none (RRDBNet)"},
    ),
    Choice(
        "generator BatchNorm (SRGAN)",
        ("model.batchnorm",),
        "SRGAN [18] (with BN)",
        "none (MSRResNet)",
        "none (MSRResNet)",
        TEXT_VS_CODE,
    ),
    Choice(
        "generator init",
        ("model.init",),
        "not stated",
        {
            "srgan": "0.1-scaled Kaiming on every conv",
            "esrgan": "0.1-scaled Kaiming on dense-block convs; others PyTorch default",
        },
        {
            "srgan": "0.1-scaled Kaiming on every conv",
            "esrgan": "0.1-scaled Kaiming on dense-block convs; others PyTorch default",
        },
        "all_convs scales every conv (same for srgan)",
    ),
    Choice(
        "from scratch (no PSNR pre-training)",
        ("train.from_scratch",),
        "follows ESRGAN [22] (PSNR pre-training)",
        "from scratch (pretrain_network_g: ~)",
        "from a PSNR-oriented model (1M iterations)",
        TEXT_VS_CODE,
    ),
    Choice(
        "pre-training schedule (when train.from_scratch=false)",
        ("train.pretrain_iters", "train.pretrain_lr", "train.pretrain_milestones"),
        "ESRGAN [22]: L1, 2e-4 halved every 200k",
        "none (from scratch)",
        "RRDBNet_PSNR: 1M, 2e-4, CosineAnnealingRestartLR (4 periods of 250k)",
        "follows ESRGAN's text (MultiStepLR x0.5); BasicSR's config restarts a cosine schedule instead",
    ),
    Choice(
        "generator start file",
        ("model.init_from",),
        "a PSNR-oriented model (one reading of 4.2)",
        "none (pretrain_network_g: ~)",
        "pretrain_network_g: a released PSNR model (e.g. ESRGAN_PSNR_x4)",
        "a released .pth/.safetensors (BasicSR or ESRGAN names) in place of pre-training; recorded as weights.generator",
    ),
    Choice("learning rate (G and D)", ("train.lr",), "1e-2", "1e-4", "1e-4", TEXT_VS_CODE + " (1e-2 diverges)"),
    Choice(
        "schedule",
        ("train.iters", "train.milestones", "train.lr_gamma"),
        "400k; halved at 50k, 100k, 200k, 300k",
        "400k; MultiStepLR x0.5 at 50k, 100k, 200k, 300k",
        "same",
    ),
    Choice("optimiser", ("train.adam_betas",), "Adam(0.9, 0.99)", "Adam(0.9, 0.99), no weight decay", "same"),
    Choice("batch and HR patch", ("data.batch_size", "data.hr_patch"), "16, 128x128", "16, 128 (gt_size)", "16, 128"),
    Choice(
        "training data",
        ("data.train_sets", "data.subimage_size", "data.subimage_step"),
        "DIV2K 800: 32,592 'non-overlapping' 480x480 sub-images",
        "DIV2K800 sub: 32,592 sub-images (meta_info)",
        "extract_subimages: 480 crop, step 240 (overlapping)",
        "32,592 is the overlapping count (step 240 plus a window flush with each far edge); the text's word is not followed",
    ),
    Choice(
        "augmentation", (), "not stated", "flips and 90-degree rotations", "same", fixed="flips and 90-degree rotations"
    ),
    Choice("EMA of the generator", ("train.ema",), "none", "none", "0.999 (ema_decay)"),
    Choice(
        "discriminator",
        (),
        "VGG-style, 128x128 input",
        "VGGStyleDiscriminator128, 64 ch",
        "same",
        fixed="VGG-style, input data.hr_patch, 64 ch",
    ),
    Choice(
        "VGG loss",
        (),
        "Phi_5,4 before ReLU, L1",
        "conv5_4 before ReLU, weight 1, ImageNet norm, L1",
        "same",
        fixed="conv5_4 before ReLU, ImageNet norm, L1",
    ),
    Choice(
        "ResNet loss",
        ("beta", "loss.variant"),
        "beta_m,n: one bottleneck's output after ReLU, L1",
        "sum of the L1s after stages 1-3, [0, 1] input, BN in train mode",
        "none (no ResNet loss)",
        "loss.variant=published_code gives the code's form; the code fixes beta3_6 and mu=0.5",
    ),
    Choice(
        "DP ratio and c",
        ("mu", "loss.c", "loss.perceptual"),
        "l_VGG + (1/mu) value((l_VGG+c)/(l_RES+c)) l_RES",
        "l_VGG + 2 (l_VGG / l_RES).item() l_RES (mu=0.5 hard-coded, no c)",
        "none (VGG loss only)",
    ),
    Choice(
        "extractor weights",
        ("weights",),
        "pre-trained (ImageNet)",
        "ImageNet files vgg19.pth, resnet50.pth",
        "ImageNet (torchvision)",
        "weights=random changes both extractors and is never the authors' setting",
    ),
    Choice(
        "metric space and border",
        ("metrics.space",),
        "Y channel, 4-pixel border",
        "RGB (test_y_channel: false), crop_border 4",
        "RGB in the ESRGAN/MSRGAN configs, crop_border 4",
        "both are always recorded; the published numbers are RGB (Table 5 bicubic Set5 26.69 / 0.7736), so the default follows the code",
    ),
    Choice(
        "test HR crop and LR",
        ("data.val_hr",),
        "not stated",
        "GTmod12 HR with the supplied LRbicx4 images",
        "GTmod12 / LRbicx4 (its benchmark downloads)",
        "a set's LRbicx<s>/ beside GTmod12/ is scored as supplied; mod4 is ESRGAN's MATLAB modcrop",
    ),
    Choice(
        "LPIPS network and version",
        ("metrics.lpips_net", "metrics.lpips_version"),
        "LPIPS [Zhang et al.]; network not stated",
        "not stated",
        "VGG, v0.1 (scripts/metrics/calculate_lpips.py)",
        "alex is the lpips package's default; the two give different values, so every table names the one used",
    ),
    Choice(
        "validation sets and interval",
        ("data.val_sets", "train.val_every"),
        "Set5, Set14, BSD100, Urban100",
        "Set14 every 5k iterations; test configs: Set5, Set14, BSDS100, Urban100",
        "Set14 every 5k iterations",
    ),
    Choice("seed", ("seed",), "not stated", "manual_seed 0", "0"),
)


def for_arch(text: str | dict[str, str], arch: str) -> str:
    return text[arch] if isinstance(text, dict) else text


def _show(value: Any) -> str:
    """A config value as it is typed on the command line."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def rows(cfg: Config) -> list[dict[str, str]]:
    """One dict per choice, keyed by COLUMNS, for `cfg`'s arch and values."""
    flat = flatten(cfg.to_dict())
    out = []
    for c in CHOICES:
        effect = "; ".join(_show(flat[k]) for k in c.keys) if c.keys else c.fixed
        keys = ", ".join(c.keys) or "(fixed)"
        values = (c.name, effect, keys, c.paper, for_arch(c.authors, cfg.arch), for_arch(c.basicsr, cfg.arch), c.note)
        out.append(dict(zip(COLUMNS, values)))
    return out


def markdown(cfg: Config) -> str:
    """The table for `cfg` as Markdown (a `|` inside a cell is escaped)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows(cfg):
        lines.append("| " + " | ".join(row[col].replace("|", "\\|") for col in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def render(cfg: Config, fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not valid; choose one of {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps({"arch": cfg.arch, "preset": cfg.preset, "rows": rows(cfg)}, indent=2) + "\n"
    return markdown(cfg)


def document() -> str:
    """docs/RECIPE.md: the table for each arch at the defaults (preset=paper)."""
    parts = [
        "# The recipe: every choice that shapes a result\n\n"
        "Generated by `sweeper recipe --document` from `sweeper/analysis/recipe.py`; tests/test_recipe.py fails when this\n"
        "file and the code disagree. *authors' code* is their ESRGAN-DP fork of BasicSR (`options/train/SRGAN_DP`,\n"
        "`options/train/ESRGAN_DP`, `basicsr/models`, `basicsr/models/losses/losses.py`); *BasicSR* is upstream\n"
        "BasicSR's MSRGAN and ESRGAN configs. Where the paper's text and the authors' code disagree, the default\n"
        "follows the code that produced the paper's tables and the note says so; the key gives the other choice.\n"
        "`sweeper recipe KEY=VALUE...` prints the table for any other settings (`--format json` too).\n"
    ]
    for arch in ARCHS:
        parts.append(f"\n## arch={arch} preset=paper\n\n" + markdown(build_config({"arch": arch})))
    return "".join(parts)


def config_from_tokens(tokens: list[str]) -> Config:
    """The validated config for command-line `key=value` tokens (training settings only)."""
    from sweeper.core.overrides import parse

    opts = parse(tokens)
    if opts.study or opts.trial is not None:
        raise UserError("this command takes training settings (arch=, preset=, key=value); studies have `sweeper run`")
    return build_config(opts.config)


def main(tokens: list[str], fmt: str = "markdown", document_all: bool = False) -> None:
    """`sweeper recipe [key=value...] [--format json] [--document]`."""
    print(document() if document_all else render(config_from_tokens(tokens), fmt), end="")


def dry_run(tokens: list[str]) -> None:
    """`sweeper train ... --dry-run`: the resolved config (YAML) and the recipe table; trains nothing."""
    cfg = config_from_tokens(tokens)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    print("\n" + markdown(cfg), end="")
