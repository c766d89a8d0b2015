"""The training configuration: typed dataclasses, the three presets, and validated `key=value` overrides.

Every default is what the authors' released code ran (their SRGAN-DP and ESRGAN-DP configs, on BasicSR),
which is the paper's text (section 4.2) or ESRGAN's where the paper defers to it. Where the text and the
code disagree the default follows the code, and a key gives the text's choice back; `sweeper recipe` prints
every such choice with the key that changes it (docs/RECIPE.md). The exception is the DP loss, `loss.variant`:
its default is the text's eqs. (8)-(9), since the beta sweep the paper reports needs the text's single-stage
ResNet loss (the released loss sums stages and fixes beta3_6). Examples:
- `train.lr` is 1e-4, not the 1e-2 printed in section 4.2 (1e-2 diverges with Adam on these networks).
- `train.from_scratch` is true: both released configs start the GAN stage without a pre-trained generator.
- `loss.gan` is the standard GAN for the SRGAN proxy (their `SRGANModel`), RaGAN (eq. 3) for ESRGAN.
- The SRGAN proxy generator has no BatchNorm and no bilinear skip (their MSRResNet); `model.batchnorm=true`
  gives Ledig et al.'s original, `model.skip=bilinear` BasicSR's MSRResNet skip.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from trainer.errors import UserError

BETAS = ("beta1_3", "beta2_4", "beta3_6", "beta4_3")
ARCHS = ("srgan", "esrgan")
PERCEPTUAL = ("dp", "vgg", "static")  # Table 6: DP (dynamic), VGG only, VGG + ResNet with a static weight
VARIANTS = ("paper", "published_code")
PRESETS = ("paper", "proxy", "smoke")
GANS = ("vanilla", "ragan")  # the standard GAN (BasicSR's SRGANModel) or RaGAN, eq. (3) (ESRGANModel)
ARCH_GAN = {"srgan": "vanilla", "esrgan": "ragan"}  # what the authors' configs use for each arch
SKIPS = ("none", "bilinear")  # generator output + bilinear upsampling of the input, or not
INITS = ("basicsr", "all_convs")  # which convs get the 0.1-scaled Kaiming init (trainer/nets/layers.py)
METRIC_SPACES = (
    "y",
    "rgb",
)  # PSNR/SSIM on MATLAB's Y (section 4.1's text) or RGB (the authors' test config, the paper's numbers)
VAL_HR = ("mod12", "mod4")  # validation HR cropped to a multiple of 12 (the published GTmod12 files) or of upscale
LPIPS_NETS = ("alex", "vgg")  # LPIPS trunk: the lpips package's default, or BasicSR's calculate_lpips script
LPIPS_VERSIONS = ("0.1", "0.0")  # the lpips package's linear heads
NOT_COMPUTATION = {
    "train.device",
    "train.devices",
    "data.num_workers",
    "data.cache",
    "train.threads",
}  # where and how fast, not what: a run may resume under others


@dataclass
class ModelConfig:
    num_feat: int = 64
    num_blocks: int = 0  # 0 = the architecture's default: 16 (SRResNet) or 23 (RRDBNet)
    growth: int = 32  # RRDB growth channels
    batchnorm: bool = False  # SRResNet only
    skip: str = "none"  # none | bilinear: add a bilinear upsampling of the input (BasicSR's MSRResNet)
    init: str = "basicsr"  # basicsr (RRDBNet: dense-block convs only) | all_convs; same for SRResNet
    init_from: str = ""  # a released generator file (.pth, .safetensors; BasicSR/ESRGAN names) to start from, instead of pre-training


@dataclass
class DataConfig:
    root: str = ""  # "" = $SWEEPER_DATA, else the embedded demo dataset
    train_sets: list[str] = field(default_factory=lambda: ["DIV2K"])
    val_sets: list[str] = field(default_factory=lambda: ["Set5", "Set14", "BSD100", "Urban100"])
    subimage_size: int = 480  # section 4.1: 480x480 sub-images
    subimage_step: int = 240  # BasicSR's extract_subimages: 32,592 sub-images from DIV2K (4.1); 480 = non-overlapping
    hr_patch: int = 128  # section 4.2
    batch_size: int = 16  # section 4.2
    val_max_images: int = 0  # 0 = every image of each validation set
    val_crop: int = 0  # 0 = whole images; else centre-crop HR validation images to this size
    val_hr: str = "mod12"  # mod12: HR cropped to a multiple of 12, as the published GTmod12 test sets; mod4: of upscale
    num_workers: int = 0  # processes making training batches ahead (same batches, same order); 0 = in the trainer
    cache: str = ""  # prepared training sets; "" = <workspace>/cache/data (trainer.prepared)


@dataclass
class LossConfig:
    perceptual: str = "dp"
    static_weight: float = 1.0  # weight of the ResNet loss when perceptual=static
    c: float = 1e-8  # eq. (9)
    pixel_weight: float = 1e-2  # lambda, eq. (2)
    adv_weight: float = 5e-3  # eta, eq. (2)
    perceptual_weight: float = 1.0  # gamma, eq. (2)
    variant: str = "paper"  # or "published_code": the authors' released implementation
    gan: str = ""  # vanilla | ragan; "" = the arch's: vanilla for srgan, ragan for esrgan (ARCH_GAN)
    ragan_detach: bool = True  # D's RaGAN loss detaches the other side's mean (BasicSR, the authors)


@dataclass
class MetricsConfig:
    """Both spaces are always computed and recorded (psnr_y, ssim_y, psnr_rgb, ssim_rgb); `space` picks the
    one that selects and that tables show first. Its default is RGB although section 4.1's text says Y: the
    paper's published numbers are RGB (Table 5's bicubic Set5 row, 26.69 / 0.7736, is the RGB protocol; on
    Y it reads 28.42), as the authors' configs (`test_y_channel: false`) score."""

    space: str = "rgb"  # rgb | y: which space `psnr`/`ssim` hold (border = upscale either way)
    lpips_net: str = "alex"  # alex | vgg: the paper does not say; BasicSR's calculate_lpips uses vgg
    lpips_version: str = "0.1"  # 0.1 | 0.0: the lpips package's linear heads


@dataclass
class TrainConfig:
    iters: int = 400_000
    lr: float = 1e-4
    milestones: list[int] = field(default_factory=lambda: [50_000, 100_000, 200_000, 300_000])
    lr_gamma: float = 0.5
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    pretrain_iters: int = 1_000_000  # ESRGAN's PSNR-oriented stage
    pretrain_lr: float = 2e-4
    pretrain_milestones: list[int] = field(default_factory=lambda: [200_000, 400_000, 600_000, 800_000])
    from_scratch: bool = True  # skip pre-training, as both of the authors' released configs do
    ema: float = 0.0  # 0 = off; else the decay of an EMA copy of the generator (e.g. 0.999)
    val_every: int = 5_000
    ckpt_every: int = 5_000
    keep_every: int = 0  # 0 = off; else keep the generator every N GAN iterations (ckpt/g_<N>.pt, a few MB each)
    log_every: int = 100
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    devices: int = 1  # ranks of one training (DDP, trainer.distributed): the global batch is split over them
    threads: int = 0  # CPU intra-op threads; 0 = the sweeper's share (cores // concurrent trials), else torch's default
    amp: bool = False  # bf16 autocast on CUDA
    channels_last: bool = False


@dataclass
class Config:
    arch: str = "srgan"
    upscale: int = 4
    mu: float = 0.5  # eq. (8); math.inf = VGG loss only
    beta: str = "beta3_6"  # eq. (5): ResNet-50 feature layer
    weights: str = "imagenet"  # extractor weights: imagenet | random | PATH
    seed: int = 0
    preset: str = "paper"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-safe dict; mu=inf is written as the string "inf"."""
        d = dataclasses.asdict(self)
        d["mu"] = format_mu(self.mu)
        return d


# Presets are plain override dicts applied on top of the defaults, so `sweeper train preset=proxy`
# and a study file that names a preset resolve through exactly the same path.
PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    "paper": {},
    "proxy": {  # the paper's recipe at a tenth of the iterations, on the 291 images: one GPU, about a day
        "data.train_sets": ["T91", "BSD200"],
        "data.val_sets": ["Set5", "Set14", "BSD100"],
        "train.iters": 40_000,
        "train.milestones": [5_000, 10_000, 20_000, 30_000],
        "train.pretrain_iters": 100_000,
        "train.pretrain_milestones": [20_000, 40_000, 60_000, 80_000],
        "train.val_every": 2_000,
        "train.ckpt_every": 2_000,
    },
    "smoke": {  # CPU, embedded data, seconds per trial: checks the plumbing, not the science
        "model.skip": "bilinear",  # a dozen iterations from scratch: the skip keeps the PSNR near bicubic's
        "data.train_sets": ["train"],
        "data.val_sets": ["Set5"],
        "data.subimage_size": 96,
        "data.subimage_step": 48,
        "data.hr_patch": 32,
        "data.batch_size": 2,
        "data.val_max_images": 2,
        "data.val_crop": 64,
        "train.iters": 12,
        "train.milestones": [6],
        "train.pretrain_iters": 8,
        "train.pretrain_milestones": [4],
        "train.val_every": 2,  # 2 crops: cheap; gives `sweeper rank-check` a curve to replay halving on
        "train.ckpt_every": 6,
        "train.log_every": 2,
    },
}

# A data root's sets: what each preset trains on when data.train_sets= is not given (the embedded demo's
# `train` set exists only in the embedded data), and the benchmark sets validated on when found there.
ROOT_TRAIN_SETS = {"smoke": ["T91", "BSD200"], "proxy": ["T91", "BSD200"], "paper": ["DIV2K"]}
BENCHMARK_SETS = ("Set5", "Set14", "BSD100", "Urban100", "Manga109")

# Short keys accepted on the command line for the most used settings.
ALIASES = {"iters": "train.iters", "root": "data.root"}


def format_mu(mu: float) -> str | float:
    return "inf" if math.isinf(mu) else mu


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict (e.g. `Config.to_dict()`) with dotted keys: {"train": {"iters": 1}} -> {"train.iters": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


@functools.cache
def key_table() -> dict[str, Any]:
    """Every settable dotted key (e.g. `train.iters`) -> its type hint, in field order. Built once: the
    hints are strings (`from __future__ import annotations`) that `typing.get_type_hints` evaluates anew on
    every call, and a trial's config sets dozens of keys."""

    def walk(cls: type, prefix: str) -> Iterator[tuple[str, Any]]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if isinstance(hint, type) and dataclasses.is_dataclass(hint):
                yield from walk(hint, f"{prefix}{f.name}.")
            else:
                yield prefix + f.name, hint

    return dict(walk(Config, ""))


def all_keys() -> list[str]:
    """Every settable dotted key, e.g. `train.iters`."""
    return list(key_table())


def parse_value(text: str) -> Any:
    """A command-line value: YAML scalars and lists (`[a, b]`), plus `inf`."""
    if text.strip().lower() in ("inf", "+inf", "infinity", "∞"):
        return math.inf
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against the field's type hint; convert strings/ints where it is unambiguous."""
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            value = [value] if not isinstance(value, str) else [v.strip() for v in value.split(",") if v.strip()]
        return [_coerce(key, v, item) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{key}={value!r}: expected true or false")
    if hint is int:
        if isinstance(value, float) and math.isinf(value):
            raise UserError(f"{key}=inf: a finite integer is needed here")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        raise UserError(f"{key}={value!r}: expected an integer")
    if hint is float:
        if isinstance(value, str):
            value = parse_value(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"{key}={value!r}: expected a number")
    if hint is str:
        return str(value)
    return value


def resolve_key(key: str) -> str:
    key = ALIASES.get(key, key)
    if key not in key_table():
        keys = all_keys()
        close = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(keys)}"
        raise UserError(f"unknown config key '{key}'{hint}")
    return key


def set_key(cfg: Config, key: str, value: Any) -> None:
    """Set one dotted key on `cfg`, with type checking."""
    key = resolve_key(key)
    *path, last = key.split(".")
    target = cfg
    for part in path:
        target = getattr(target, part)
    setattr(target, last, _coerce(key, value, key_table()[key]))


def check_choice(key: str, value: Any, valid: tuple[str, ...]) -> None:
    """UserError naming `key=value` and the valid choices unless `value` is one of them."""
    if value not in valid:
        raise UserError(f"{key}={value!r} is not valid; choose one of {', '.join(valid)}")


def check_mu(mu: float) -> None:
    """Eq. (8) weighs the ResNet loss by 1/mu: mu must be positive (the paper's grid) or inf (VGG loss only)."""
    if not mu > 0:
        raise UserError(
            f"mu={mu}: mu must be a positive number (eq. 8 weighs the ResNet loss by 1/mu) or inf for VGG loss only"
        )


def validate(cfg: Config) -> Config:
    """Cross-field checks; each failure names the bad value and what would be valid."""
    check_choice("arch", cfg.arch, ARCHS)
    check_choice("beta", cfg.beta, BETAS)
    check_choice("preset", cfg.preset, PRESETS)
    check_choice("loss.perceptual", cfg.loss.perceptual, PERCEPTUAL)
    check_choice("loss.variant", cfg.loss.variant, VARIANTS)
    cfg.loss.gan = cfg.loss.gan or ARCH_GAN[cfg.arch]
    check_choice("loss.gan", cfg.loss.gan, GANS)
    check_choice("model.skip", cfg.model.skip, SKIPS)
    check_choice("model.init", cfg.model.init, INITS)
    check_choice("data.val_hr", cfg.data.val_hr, VAL_HR)
    check_choice("metrics.space", cfg.metrics.space, METRIC_SPACES)
    check_choice("metrics.lpips_net", cfg.metrics.lpips_net, LPIPS_NETS)
    check_choice("metrics.lpips_version", cfg.metrics.lpips_version, LPIPS_VERSIONS)
    check_mu(cfg.mu)
    if cfg.upscale not in (2, 3, 4):
        raise UserError(f"upscale={cfg.upscale} is not supported; choose 2, 3 or 4")
    if cfg.data.hr_patch % cfg.upscale or cfg.data.hr_patch % 32:
        raise UserError(f"data.hr_patch={cfg.data.hr_patch}: must be a multiple of 32 and of upscale={cfg.upscale}")
    if not 0 < cfg.data.subimage_step <= cfg.data.subimage_size:
        raise UserError(
            f"data.subimage_step={cfg.data.subimage_step}: must be between 1 and data.subimage_size={cfg.data.subimage_size} "
            "(240 gives the paper's 32,592 DIV2K sub-images; 480 non-overlapping ones)"
        )
    if cfg.model.init_from and not cfg.train.from_scratch:
        raise UserError(
            f"model.init_from={cfg.model.init_from} replaces the PSNR pre-training, and train.from_scratch=false asks "
            "for it too: drop one (the released file is the pre-trained generator)"
        )
    if cfg.data.num_workers < 0:
        raise UserError(f"data.num_workers={cfg.data.num_workers}: must be 0 (batches made in the trainer) or more")
    if cfg.loss.c <= 0:
        raise UserError(f"loss.c={cfg.loss.c}: must be a tiny positive constant (eq. 9)")
    if cfg.train.threads < 0:
        raise UserError(f"train.threads={cfg.train.threads}: must be 0 (automatic) or a positive number of threads")
    for name in ("iters", "val_every", "ckpt_every", "log_every"):
        if getattr(cfg.train, name) <= 0:
            raise UserError(f"train.{name}={getattr(cfg.train, name)}: must be positive")
    if cfg.train.devices < 1 or cfg.data.batch_size % cfg.train.devices:
        fits = [n for n in range(1, cfg.data.batch_size + 1) if cfg.data.batch_size % n == 0]
        raise UserError(
            f"train.devices={cfg.train.devices}: the global batch data.batch_size={cfg.data.batch_size} is split "
            f"evenly over the devices; choose one of {', '.join(map(str, fits))}"
        )
    if cfg.train.keep_every < 0:
        raise UserError(
            f"train.keep_every={cfg.train.keep_every}: must be 0 (keep only the final generator) or a positive number of iterations"
        )
    if not 0 <= cfg.train.ema < 1:
        raise UserError(f"train.ema={cfg.train.ema}: must be in [0, 1) (0 turns EMA off)")
    return cfg


def build_config(overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the preset named in `overrides` (default `paper`), then the overrides themselves."""
    overrides = dict(overrides or {})
    preset = str(overrides.get("preset", "paper"))
    check_choice("preset", preset, PRESETS)
    cfg = Config()
    for key, value in {**PRESET_OVERRIDES[preset], **overrides}.items():
        set_key(cfg, key, parse_value(value) if isinstance(value, str) and key != "weights" else value)
    return validate(cfg)


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from `Config.to_dict()` output (e.g. a trial's config.yaml)."""
    flat: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    preset = flat.pop("preset", "paper")
    cfg = Config(preset=preset)
    for key, value in flat.items():
        set_key(cfg, key, parse_value(value) if key == "mu" and isinstance(value, str) else value)
    return validate(cfg)
