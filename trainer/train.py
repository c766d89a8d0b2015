"""One training run in a trial folder (docs/ARCHITECTURE.md, "Trial folder"): ESRGAN's two stages.

1. PSNR-oriented pre-training of the generator with the pixel L1 loss alone, cached in `cache_dir` under a
   hash of everything it depends on and shared by every run that needs the same one (skipped when
   `train.from_scratch`, as in the authors' released config). `model.init_from=FILE` starts the GAN stage
   from a released generator instead (`trainer.generator_files`).
2. The GAN stage, eq. (2): L_G = lambda * l1 + eta * l_adv + gamma * l_DP (eqs. 8, 9; l_adv: `loss.gan`), alternating
   one generator and one discriminator step per iteration, Adam(0.9, 0.99), MultiStepLR, optional EMA.

Everything needed to resume exactly is checkpointed atomically; calling `train` again on the folder resumes.

`train.devices=N` trains the same run on N ranks (`trainer.distributed`: DDP, the global batch split, global
BatchNorm statistics and loss means): `train` launches them on this machine, or, inside ranks a launcher
started (torchrun, submitit tasks), joins their group. Rank 0 alone writes the trial folder (checkpoints,
logs, progress, validation, result). No host sync per iteration: the losses are summed on the device
(`LossMeter`) and read every `train.log_every` and before any checkpoint, validation or stop.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import functools
import hashlib
import json
import math
import platform
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm import tqdm

from trainer import distributed, heartbeat, weight_files
from trainer.checkpoint import (
    FINISHED,
    SNAPSHOT,
    load_checkpoint,
    rng_state,
    save_atomic,
    save_generator,
    set_rng_state,
    snapshot_path,
    snapshot_steps,
)
from trainer.config import NOT_COMPUTATION, Config, config_from_dict, flatten
from trainer.data import TrainBatches, ValImage, load_val_sets, lr_source
from trainer.errors import MachineFault, UserError
from trainer.files import file_lock, write_json_atomic, write_text_atomic
from trainer.generator_files import init_state
from trainer.images import to_rgb, write_image
from trainer.ledger import Segment
from trainer.losses import DualPerceptualLoss, discriminator_loss, generator_adversarial_loss
from trainer.metrics import LPIPSMetric, per_image_csv, score
from trainer.nets import build_discriminator, build_generator
from trainer.scores import set_means
from trainer.terminal import bar

ModuleT = TypeVar("ModuleT", bound=nn.Module)

SAMPLES = 2  # SR crops saved per validation (first images of the first validation set)
SAMPLE_CROP = 128


class Diverged(Exception):
    """A loss became NaN or infinite at iteration `step`; raised before any checkpoint, validation or rung
    holds weights trained on it."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class Interrupted(Exception):
    """SIGTERM arrived (after `stop_on_sigterm`); raised at the next iteration, after a checkpoint."""


_sigterm = {"received": False, "armed": False}


def stop_on_sigterm() -> None:
    """From now on SIGTERM (Ctrl-C of the sweeper, `sweeper cancel`) ends training at the next iteration with
    a checkpoint and a result.json of status "interrupted", which the sweeper resumes without spending a retry.
    Ranks launched by `train` do the same (all of them stop at the same iteration)."""
    _sigterm["armed"] = True
    signal.signal(signal.SIGTERM, lambda signum, frame: _sigterm.update(received=True))


def stop_requested() -> bool:
    """SIGTERM has reached this rank or another one (one CPU collective across ranks, no device sync)."""
    return distributed.any_rank(_sigterm["received"])


# ----------------------------------------------------------------------------- small helpers


def pick_device(cfg: Config) -> torch.device:
    name = cfg.train.device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name}: no CUDA device is visible here; use train.device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device={name!r} is not valid; use auto, cpu, cuda or cuda:N") from None


def where_trained(device: torch.device) -> dict[str, Any]:
    """What the numbers of a run depend on beyond its config: the intra-op thread count (sums in another order
    move the 4th decimal), the device and the library versions. Recorded in result.json; the same config
    trains bit-identical runs only where all of these are equal."""
    return {"threads": torch.get_num_threads(), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
            "device_type": device.type, "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}  # fmt: skip


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def note(msg: str) -> None:
    tqdm.write(f"note: {msg}", file=sys.stderr)


def check_finite(losses: dict[str, torch.Tensor], stage: str, step: int) -> dict[str, float]:
    """All losses as floats (one device sync); raises Diverged if any is NaN or infinite."""
    values = dict(zip(losses, torch.stack([v.detach().float() for v in losses.values()]).tolist()))
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise Diverged(f"{stage} diverged at iteration {step}: " + ", ".join(f"{k}={v}" for k, v in bad.items()), step)
    return values


class LossMeter:
    """The losses of the iterations since the last `read`, summed on the device, and the first iteration where
    one was NaN or infinite: adding costs no host sync (the authors' DP code syncs twice per step)."""

    def __init__(self, stage: str):
        self.stage, self.count = stage, 0
        self.names: list[str] = []
        self.sum: torch.Tensor | None = None
        self.first_bad: torch.Tensor | None = None

    def add(self, losses: dict[str, torch.Tensor], step: int) -> None:
        v = torch.stack([t.detach().float() for t in losses.values()])
        if self.sum is None:
            self.names, self.sum, self.first_bad = list(losses), torch.zeros_like(v), v.new_full((), math.inf)
        assert self.sum is not None and self.first_bad is not None
        self.sum += v
        self.first_bad = torch.where(torch.isfinite(v).all(), self.first_bad, self.first_bad.clamp(max=step))
        self.count += 1

    def read(self, step: int) -> dict[str, float]:
        """The mean of each loss over the iterations since the last read and over the ranks (what one process
        on the whole batch logs), as floats: one sync. Raises Diverged naming the first bad iteration."""
        if self.sum is None or self.first_bad is None or not self.count:
            return {}
        mean = distributed.mean_over_ranks(self.sum) / self.count
        bad = float(distributed.min_over_ranks(self.first_bad))
        self.sum.zero_()
        self.count, self.first_bad = 0, self.first_bad.new_full((), math.inf)
        return check_finite(dict(zip(self.names, mean)), self.stage, int(bad) if math.isfinite(bad) else step)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    if not distributed.world().main:
        return
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def drop_records_after(path: Path, step: int) -> None:
    """On resume, forget log lines written after the checkpoint (they will be written again)."""
    if not distributed.world().main or not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):  # a line cut short by a crash is dropped too
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))


class Progress:
    """tqdm bar (it/s, ETA, the losses last read) plus `progress.json` rewritten every few seconds (the heartbeat,
    `trainer.heartbeat`: rank 0's)."""

    def __init__(self, stage: str, start: int, total: int, show: bool):
        self.stage, self.start, self.total = stage, start, total
        self.t0 = self.last_write = self.last_log = time.monotonic()
        self.logged = start
        self.main = distributed.world().main
        self.bar = bar(total=total, initial=start, desc=stage, disable=not (show and self.main))
        self.write(start)

    def update(self, step: int, losses: dict[str, float] | None = None) -> None:
        self.bar.update(step - self.bar.n)
        if losses:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=False)
        if time.monotonic() - self.last_write >= heartbeat.EVERY_S or step == self.total:
            self.write(step)

    def log(self, step: int, losses: dict[str, float]) -> dict[str, float]:
        """One line on stdout (the trial's stdout.log, shown by `sweeper logs`): step, losses, seconds per step
        since the last line (rank 0's). Returns the step time and the wall time (unix s) for metrics.jsonl."""
        now = time.monotonic()
        step_s = (now - self.last_log) / max(step - self.logged, 1)
        self.last_log, self.logged = now, step
        if self.main:
            text = " ".join(f"{k} {v:.4g}" for k, v in losses.items())
            tqdm.write(f"{self.stage} {step}/{self.total}: {text}, {step_s:.3g} s/step", file=sys.stdout)
        return {"step_s": step_s, "time": time.time()}

    def write(self, step: int) -> None:
        if not self.main:
            return
        self.last_write = now = time.monotonic()
        it_s = (step - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - step) / it_s if it_s > 0 else None
        heartbeat.write({"stage": self.stage, "step": step, "total": self.total, "it_s": it_s, "eta_s": eta})

    def close(self) -> None:
        self.bar.close()


def autocast(cfg: Config, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when `train.amp`; a no-op otherwise."""
    enabled = cfg.train.amp and device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def prepare(net: ModuleT, cfg: Config, device: torch.device) -> ModuleT:
    net = net.to(device)
    return net.to(memory_format=torch.channels_last) if cfg.train.channels_last else net


def batch_to(x: torch.Tensor, cfg: Config) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if cfg.train.channels_last else x


def make_optimizer(
    net: nn.Module, lr: float, milestones: list[int], cfg: Config
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.MultiStepLR]:
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(cfg.train.adam_betas[0], cfg.train.adam_betas[1]))
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=cfg.train.lr_gamma)


# ----------------------------------------------------------------------------- stage 1: pre-training


def pretrain_key(cfg: Config, data_id: str) -> str:
    """Hash of every setting the pre-trained generator depends on (and nothing else); `data_id` names the
    prepared training pixels (`TrainBatches.data_id`: content hashes, not paths)."""
    d, t = cfg.data, cfg.train
    deps = {
        "version": 1,
        "arch": cfg.arch,
        "upscale": cfg.upscale,
        "seed": cfg.seed,
        "model": dataclasses.asdict(cfg.model),
        "data": [data_id, d.hr_patch, d.batch_size],
        "pretrain": [t.pretrain_iters, t.pretrain_lr, t.pretrain_milestones, t.lr_gamma, t.adam_betas, t.amp],
    }
    return hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()[:16]


def pretrained_generator(
    cfg: Config, cache_dir: Path, device: torch.device, show: bool
) -> tuple[dict[str, torch.Tensor], int, float]:
    """The PSNR-oriented generator weights for `cfg`, trained now unless cached, with the pre-training
    iterations and seconds this call spent on it (0, 0.0 when reused). One training trains a given cache
    entry at a time (file lock, held by its rank 0; its other ranks wait for it); the others wait and then
    reuse it."""
    batches = TrainBatches(cfg, cache_dir, device, show, distributed.shard(cfg.data.batch_size))
    folder = cache_dir / f"pretrain-{cfg.arch}-x{cfg.upscale}-{pretrain_key(cfg, batches.data_id)}"
    ckpt_path = folder / "last.pt"
    trained, seconds = 0, 0.0
    waiting = functools.partial(heartbeat.beat, "waiting for the pre-training cache (another training writes it)")
    with file_lock(folder.with_suffix(".lock"), waiting) if distributed.world().main else contextlib.nullcontext():
        distributed.barrier()  # the lock is ours: every rank may read the entry
        ckpt = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
        if ckpt is None or ckpt["step"] < cfg.train.pretrain_iters:
            t0, before = time.monotonic(), ckpt["step"] if ckpt else 0
            ckpt = run_pretrain(cfg, folder, ckpt, batches, show)
            trained, seconds = cfg.train.pretrain_iters - before, time.monotonic() - t0
        distributed.barrier()  # every rank has read the entry before the lock goes
    return ckpt["g"], trained, seconds


def run_pretrain(
    cfg: Config, folder: Path, ckpt: dict[str, Any] | None, batches: TrainBatches, show: bool
) -> dict[str, Any]:
    """Train the generator with L1 alone for `train.pretrain_iters` on `batches` (at batch 0), resuming
    from `ckpt` if given."""
    seed_everything(cfg.seed)
    device = batches.device
    g = distributed.sync_batchnorm(prepare(build_generator(cfg), cfg, device).train())
    g_run = distributed.data_parallel(g, device)
    opt, sched = make_optimizer(g, cfg.train.pretrain_lr, cfg.train.pretrain_milestones, cfg)
    total, start = cfg.train.pretrain_iters, 0
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "metrics.jsonl"
    if ckpt is not None:
        g.load_state_dict(ckpt["g"])
        opt.load_state_dict(ckpt["opt_g"])
        sched.load_state_dict(ckpt["sched_g"])
        batches.load_state_dict(ckpt["data"])
        set_rng_state(ckpt["rng"])
        start = ckpt["step"]
        drop_records_after(log, start)

    def state(step: int) -> dict[str, Any]:
        return {
            "config": cfg.to_dict(),
            "stage": "pretrain",
            "step": step,
            "g": g.state_dict(),
            "opt_g": opt.state_dict(),
            "sched_g": sched.state_dict(),
            "data": batches.state_dict(),
            "rng": rng_state(),
        }

    def save(step: int) -> None:
        if distributed.world().main:
            save_atomic(state(step), folder / "last.pt")

    bar, meter = Progress("pretrain", start, total, show), LossMeter("pre-training")
    step = start
    try:
        for step in range(start + 1, total + 1):
            lr, hr = next(batches)
            with autocast(cfg, device):
                l_pix = F.l1_loss(g_run(batch_to(lr, cfg)), hr)
            meter.add({"l_pix": l_pix}, step)
            opt.zero_grad(set_to_none=True)
            l_pix.backward()
            opt.step()
            sched.step()
            bar.update(step)
            stop = stop_requested()
            if step % cfg.train.log_every == 0:
                values = meter.read(step)
                bar.update(step, values)
                append_jsonl(log, {"step": step, "kind": "train", **values, **bar.log(step, values)})
            if (step % cfg.train.ckpt_every == 0 and step < total) or stop:
                meter.read(step)  # never checkpoint weights trained on a NaN
                save(step)
            if stop:
                raise Interrupted(f"interrupted (SIGTERM) in pre-training at iteration {step}")
        meter.read(step)
    finally:
        bar.close()
    final = state(step)
    save(step)
    return final


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def super_resolve(g: nn.Module, lr_u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (C, h, w) LR image -> float (1, 3, H, W) SR in [0, 1]; grayscale input is copied to RGB."""
    lr = to_rgb(lr_u8).to(device, torch.float32).unsqueeze(0) / 255.0
    return g(lr).float().clamp_(0, 1)


def score_image(sr: torch.Tensor, img: ValImage, upscale: int, space: str = "y") -> tuple[float, float]:
    """PSNR/SSIM of a (1, 3, H, W) SR output in one space (`metrics.score` gives both)."""
    scores = score(sr[0], img.hr, upscale)
    return scores[f"psnr_{space}"], scores[f"ssim_{space}"]


Means = dict[str, dict[str, float | None]]  # set -> metric -> mean over its images
PerImage = dict[str, dict[str, dict[str, float | None]]]  # set -> image file name -> metric -> value


def validate(
    g: nn.Module,
    val_sets: dict[str, list[ValImage]],
    lpips: LPIPSMetric,
    cfg: Config,
    device: torch.device,
    samples_dir: Path,
    step: int,
) -> tuple[Means, PerImage]:
    """Per image and as means per validation set: PSNR/SSIM in both spaces (`scores.SCORES`) and LPIPS
    (None when unavailable); the means also carry `psnr`/`ssim` of `metrics.space`. Saves a few SR crops."""
    was_training = g.training
    g.eval()
    means: Means = {}
    per_image: PerImage = {}
    for i, (set_name, images) in enumerate(val_sets.items()):
        rows = per_image[set_name] = {}
        for j, img in enumerate(images):
            heartbeat.beat(f"validating {set_name}")
            sr = super_resolve(g, img.lr, device)
            lp = (
                float(lpips(sr, to_rgb(img.hr).unsqueeze(0).float().div(255).to(device))[0])
                if lpips.available
                else None
            )
            rows[img.name] = {**score(sr[0], img.hr, cfg.upscale), "lpips": lp}
            if i == 0 and j < SAMPLES:
                h, w = sr.shape[-2:]
                top, left = max(0, (h - SAMPLE_CROP) // 2), max(0, (w - SAMPLE_CROP) // 2)
                crop = sr[0, :, top : top + SAMPLE_CROP, left : left + SAMPLE_CROP]
                write_image(samples_dir / f"{step:07d}_{set_name}_{Path(img.name).stem}.png", crop.cpu())
        means[set_name] = set_means(rows.values(), cfg.metrics.space)
    g.train(was_training)
    return means, per_image


# ----------------------------------------------------------------------------- stage 2: GAN


def check_resumable(cfg: Config, saved: dict[str, Any], path: Path) -> None:
    new, old = flatten(cfg.to_dict()), flatten(saved)
    diff = sorted(k for k in new.keys() | old.keys() if new.get(k) != old.get(k) and k not in NOT_COMPUTATION)
    if diff:
        changes = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise UserError(f"{path} was started with other settings ({changes}); use a new run folder or the same ones")


@dataclass
class Gan:
    """The GAN stage's state: networks, DP loss, optimisers, schedulers and the optional EMA generator.
    `g_run`/`d_run` are `g`/`d` under DDP when training on several ranks (else the same modules)."""

    cfg: Config
    g: nn.Module
    d: nn.Module
    percep: DualPerceptualLoss
    ema: nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    sched_g: torch.optim.lr_scheduler.LRScheduler
    sched_d: torch.optim.lr_scheduler.LRScheduler
    g_run: nn.Module
    d_run: nn.Module

    @classmethod
    def build(cls, cfg: Config, device: torch.device) -> Gan:
        t, lw = cfg.train, cfg.loss
        seed_everything(cfg.seed)
        g = distributed.sync_batchnorm(prepare(build_generator(cfg), cfg, device).train())
        d = distributed.sync_batchnorm(prepare(build_discriminator(cfg), cfg, device).train())
        percep = DualPerceptualLoss(
            cfg.mu, cfg.beta, cfg.weights, lw.c, mode=lw.perceptual, static_weight=lw.static_weight, variant=lw.variant
        )
        ema = copy.deepcopy(g).requires_grad_(False) if t.ema > 0 else None
        opt_g, sched_g = make_optimizer(g, t.lr, t.milestones, cfg)
        opt_d, sched_d = make_optimizer(d, t.lr, t.milestones, cfg)
        percep = cast(
            DualPerceptualLoss, distributed.sync_batchnorm(prepare(percep, cfg, device))
        )  # the published-code ResNet's BN
        return cls(
            cfg,
            g,
            d,
            percep,
            ema,
            opt_g,
            opt_d,
            sched_g,
            sched_d,
            distributed.data_parallel(g, device),
            distributed.data_parallel(d, device),
        )

    def step(self, lr: torch.Tensor, hr: torch.Tensor) -> dict[str, torch.Tensor]:
        """One generator step, eq. (2), then one discriminator step, eq. (3); returns the losses as tensors
        on the device (this rank's shard's; `LossMeter` averages them over ranks when it reads them)."""
        cfg, d, lw = self.cfg, self.d, self.cfg.loss
        lr, hr = batch_to(lr, cfg), batch_to(hr, cfg)
        with autocast(cfg, lr.device):
            sr = self.g_run(lr)
            d.requires_grad_(False)  # the generator's adversarial term needs no D parameter gradients (nor DDP)
            fake_for_g = d(sr)
            d.requires_grad_(True)
            real, fake = self.d_run(hr), self.d_run(sr.detach())
            l_pix = F.l1_loss(sr, hr)
            p = self.percep(sr, hr)
            l_adv = generator_adversarial_loss(lw.gan, real, fake_for_g)  # loss.gan: vanilla | ragan (eq. 3)
            l_g = lw.pixel_weight * l_pix + lw.adv_weight * l_adv + lw.perceptual_weight * p["total"]  # eq. (2)
            l_d = discriminator_loss(lw.gan, real, fake, lw.ragan_detach)
        losses = {
            "l_g": l_g,
            "l_pix": l_pix,
            "l_adv": l_adv,
            "l_percep": p["total"],
            "l_vgg": p["vgg"],
            "l_res": p["res"],
            "dp_weight": p["weight"],
            "l_d": l_d,
        }
        for opt, loss, sched in ((self.opt_g, l_g, self.sched_g), (self.opt_d, l_d, self.sched_d)):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if self.ema is not None:
            with torch.no_grad():
                for e, v in zip(self.ema.state_dict().values(), self.g.state_dict().values()):
                    e.lerp_(v, 1 - cfg.train.ema) if e.is_floating_point() else e.copy_(v)
        return losses

    @property
    def evaluated(self) -> nn.Module:
        """The generator that validation scores and snapshots keep: the EMA copy when there is one."""
        return self.ema if self.ema is not None else self.g

    def state_dict(self) -> dict[str, Any]:
        ema = self.ema.state_dict() if self.ema is not None else None
        return {
            "g": self.g.state_dict(),
            "d": self.d.state_dict(),
            "ema": ema,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
        }

    def load_generator(self, weights: dict[str, torch.Tensor]) -> None:
        """Start from pre-trained generator weights (the EMA copy too)."""
        for net in (self.g, self.ema):
            if net is not None:
                net.load_state_dict(weights)

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        for key in ("g", "d", "opt_g", "opt_d", "sched_g", "sched_d"):
            getattr(self, key).load_state_dict(sd[key])
        if self.ema is not None:
            self.ema.load_state_dict(sd["ema"])


@dataclass
class Tally:
    """What result.json reports, kept current by the loop (and carried across resumes by the checkpoint)."""

    step: int = 0
    final: Means = field(default_factory=dict)
    per_image: PerImage = field(default_factory=dict)  # the latest validation's values, image by image
    earlier_s: float = 0.0  # time spent by earlier calls on this run
    t0: float = field(default_factory=time.monotonic)

    def duration_s(self) -> float:
        return self.earlier_s + time.monotonic() - self.t0


def train(
    cfg: Config, run_dir: Path, cache_dir: Path, progress: bool = True, *, stop_after: int | None = None
) -> dict[str, Any]:
    """Run (or resume, or return the finished result of) one training run in `run_dir`.

    `stop_after=N` (a rung of successive halving) ends this call after GAN iteration N: it validates there,
    checkpoints and writes `rungs/<N>.json`, shaped like result.json with status "stopped" (no result.json);
    calling again resumes exactly. After `stop_on_sigterm`, SIGTERM ends it with a checkpoint and status
    "interrupted". Raises UserError for bad settings, data or missing weights before any training; a
    diverging loss ends the run with status "failed". With `train.devices` > 1 outside a launch, the ranks
    are launched here (`launch_ranks`) and rank 0's result is returned.
    """
    run_dir, cache_dir = Path(run_dir), Path(cache_dir)
    result_path = run_dir / "result.json"
    if result_path.exists():
        done = json.loads(result_path.read_text())
        if done.get("status") == "complete":
            return done
    if cfg.train.devices > 1 and not distributed.launched():
        return launch_ranks(cfg, run_dir, cache_dir, progress, stop_after)
    device = pick_device(cfg)
    world = distributed.init(cfg.train.devices, device.type)
    with heartbeat.attached(run_dir if world.main else None):  # progress.json: rank 0's, kept moving
        return train_here(cfg, run_dir, cache_dir, progress, stop_after, distributed.rank_device(device), world)


def train_here(
    cfg: Config,
    run_dir: Path,
    cache_dir: Path,
    progress: bool,
    stop_after: int | None,
    device: torch.device,
    world: distributed.World,
) -> dict[str, Any]:
    """`train` in this process: the only one, or one rank of a launched training."""
    result_path, ckpt_path = run_dir / "result.json", run_dir / "ckpt" / "last.pt"
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if ckpt is not None:
        check_resumable(cfg, ckpt["config"], ckpt_path)
        if ckpt["stage"] == FINISHED:
            raise UserError(
                f"{ckpt_path}: this run finished and kept only its generator weights; delete {run_dir} to train it again"
            )
    if world.main:
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    segment = Segment(
        run_dir, ckpt["step"] if ckpt is not None else 0, device.type, torch.get_num_threads(), world.size, world.main
    )
    segment.record(segment.from_step)  # this call's cost ledger line, there from its start
    if cfg.train.amp and device.type != "cuda":
        note("train.amp applies to CUDA only; training in float32 on the CPU")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    gan = Gan.build(cfg, device)  # before pre-training, so missing extractor weights fail fast
    init_weights, generator_used = (
        None,
        "random init" if cfg.train.from_scratch else f"pre-trained: L1, {cfg.train.pretrain_iters} iterations",
    )
    if cfg.model.init_from:  # a bad file fails here, before any data is prepared
        init_weights, generator_used = init_state(cfg, gan.g)
    if cfg.data.hr_patch != 128 and world.main:
        note(
            f"discriminator input is {cfg.data.hr_patch}x{cfg.data.hr_patch}, not the paper's 128x128: "
            f"its first linear layer takes 512*{cfg.data.hr_patch // 32}^2 features instead of 512*4^2"
        )
    mc = cfg.metrics
    batches = TrainBatches(cfg, cache_dir, device, progress, distributed.shard(cfg.data.batch_size))
    val_sets, lpips = (
        (load_val_sets(cfg), LPIPSMetric(device, mc.lpips_net, mc.lpips_version)) if world.main else ({}, None)
    )  # rank 0 validates
    weights_used = {
        "extractors": weight_files.describe(cfg.weights),  # what was loaded: a random run is never recorded otherwise
        "lpips": "imagenet" if lpips and lpips.available else "unavailable",
        "generator": generator_used,  # where the GAN stage's generator started: random init, pre-training or a file
    }
    metrics_used = {
        "space": mc.space,
        "lpips_net": mc.lpips_net,
        "lpips_version": mc.lpips_version,
        "val_hr": cfg.data.val_hr,
        "val_lr": {name: lr_source(pairs) for name, pairs in val_sets.items()},
    }
    environment = where_trained(device)
    tally = Tally()

    def result(status: str, reason: str | None) -> dict[str, Any]:
        checkpoint = str(ckpt_path) if ckpt_path.exists() else None
        return {
            "status": status,
            "reason": reason,
            "final": tally.final,
            "per_image": tally.per_image,
            "metrics": metrics_used,
            "weights": weights_used,
            "environment": environment,
            "snapshots": snapshot_steps(run_dir),
            "data_id": batches.data_id,
            "iters": tally.step,
            "duration_s": tally.duration_s(),
            "checkpoint": checkpoint,
            "world_size": world.size,
        }

    def finish(out: dict[str, Any], path: Path) -> dict[str, Any]:
        if world.main:
            write_json_atomic(path, out)
        return out

    try:
        if ckpt is not None:
            gan.load_state_dict(ckpt)
            batches.load_state_dict(ckpt["data"])
            set_rng_state(ckpt["rng"])
            tally.step, tally.final, tally.earlier_s = ckpt["step"], ckpt["final"], ckpt["elapsed_s"]
            tally.per_image = ckpt.get("per_image", {})  # absent from checkpoints older than per-image metrics
        else:
            if init_weights is not None:
                gan.load_generator(init_weights)
            elif not cfg.train.from_scratch:
                weights_g, segment.pretrain_iters, segment.pretrain_s = pretrained_generator(
                    cfg, cache_dir, device, progress
                )
                segment.pretrain = "trained" if segment.pretrain_iters else "reused"
                gan.load_generator(weights_g)
            seed_everything(cfg.seed)  # the same state whether pre-training ran here or came from the cache
        drop_records_after(run_dir / "metrics.jsonl", tally.step)  # lines logged after the checkpoint, if any
        stopped = run_gan(cfg, run_dir, gan, batches, val_sets, lpips, tally, progress, stop_after, segment)
    except (Diverged, Interrupted) as e:
        return finish(result("interrupted" if isinstance(e, Interrupted) else "failed", str(e)), result_path)
    finally:
        segment.record(tally.step)
    if world.main:
        write_text_atomic(run_dir / "per_image.csv", per_image_csv(tally.per_image))
    if stopped:  # a rung of successive halving: its result, beside the checkpoint
        return finish(
            result("stopped", f"stopped after iteration {tally.step} as asked (stop_after)"),
            run_dir / "rungs" / f"{tally.step}.json",
        )
    out = finish(result("complete", None), result_path)
    if world.main:  # after result.json (a crash in between only leaves the full state), from memory: no re-read
        save_generator(ckpt_path, cfg.to_dict(), FINISHED, tally.step, gan.evaluated.state_dict())
    return out


def run_gan(
    cfg: Config,
    run_dir: Path,
    gan: Gan,
    batches: TrainBatches,
    val_sets: dict[str, list[ValImage]],
    lpips: LPIPSMetric | None,
    tally: Tally,
    show: bool,
    stop_after: int | None,
    segment: Segment,
) -> bool:
    """The GAN stage from iteration tally.step + 1: train, log, validate, checkpoint (and bring the cost
    ledger's line up to date). Returns True when it stopped early because of `stop_after`. On several ranks
    every rank runs this loop; rank 0 alone validates (the others wait) and writes."""
    t = cfg.train
    device = next(gan.g.parameters()).device
    metrics_log = run_dir / "metrics.jsonl"
    main = distributed.world().main

    def save() -> None:
        if main:
            save_atomic(
                {
                    "config": cfg.to_dict(),
                    "stage": "gan",
                    "step": tally.step,
                    **gan.state_dict(),
                    "data": batches.state_dict(),
                    "rng": rng_state(),
                    "final": tally.final,
                    "per_image": tally.per_image,
                    "elapsed_s": tally.duration_s(),
                },
                run_dir / "ckpt" / "last.pt",
            )
        segment.record(tally.step)

    def validate_now(step: int) -> None:
        if lpips is not None:  # rank 0
            tally.final, tally.per_image = validate(
                gan.evaluated, val_sets, lpips, cfg, device, run_dir / "samples", step
            )
            for set_name, m in tally.final.items():
                append_jsonl(metrics_log, {"step": step, "kind": "val", "set": set_name, **m})
        distributed.barrier()

    if stop_after is not None and tally.step >= stop_after and tally.step < t.iters:  # checkpointed at the rung already
        return True
    bar, meter = Progress("gan", tally.step, t.iters, show), LossMeter("GAN training")
    try:
        for step in range(tally.step + 1, t.iters + 1):
            meter.add(gan.step(*next(batches)), step)
            tally.step = step
            bar.update(step)
            stop = stop_requested()
            validating = step % t.val_every == 0 or step == t.iters or step == stop_after
            saving = step % t.ckpt_every == 0 or step == t.iters or step == stop_after or stop
            if step % t.log_every == 0:
                values = meter.read(step)
                bar.update(step, {k: values[k] for k in ("l_g", "l_percep", "l_d")})
                lr = gan.sched_g.get_last_lr()[0]
                append_jsonl(metrics_log, {"step": step, "kind": "train", **values, "lr": lr, **bar.log(step, values)})
            if validating or saving:
                meter.read(step)  # never validate or checkpoint weights trained on a NaN
            if validating:
                validate_now(step)
            if t.keep_every and step % t.keep_every == 0 and distributed.world().main:
                save_generator(snapshot_path(run_dir, step), cfg.to_dict(), SNAPSHOT, step, gan.evaluated.state_dict())
            if saving:
                save()
            if step == stop_after and step < t.iters:
                return True
            if stop and step < t.iters:
                raise Interrupted(f"interrupted (SIGTERM) at iteration {step}")
    except Diverged as e:
        tally.step = e.step - 1  # the iterations trained before the first bad loss
        raise
    finally:
        bar.close()
    return False


# ----------------------------------------------------------------------------- several ranks


def launch_ranks(cfg: Config, run_dir: Path, cache_dir: Path, show: bool, stop_after: int | None) -> dict[str, Any]:
    """`train` on `train.devices` ranks of this machine (torch.distributed.run's elastic agent), each with an
    equal share of this process's intra-op threads; returns rank 0's result. A rank's UserError is raised
    here as one line; a rank that dies fails the launch (the others are stopped), and one killed by a signal is
    the machine's fault (MachineFault: no retry spent). SIGTERM to this process reaches the ranks, which
    checkpoint and stop together (result "interrupted") when `stop_on_sigterm` was called here."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    threads = max(1, (cfg.train.threads or torch.get_num_threads()) // cfg.train.devices)
    args = [cfg.to_dict(), str(run_dir), str(cache_dir), show, stop_after, threads, _sigterm["armed"]]
    try:
        out = distributed.launch(_rank_main, args, cfg.train.devices)
    except ChildFailedError as e:  # one line for result.json's reason; the ranks' own errors are in the job's log
        rank, failure = e.get_first_failure()
        if failure.exitcode < 0:  # killed (kill -9, the OOM killer, a lost node): the machine's fault, no retry spent
            raise MachineFault(
                errno.ECHILD,
                f"rank {rank} of {cfg.train.devices} was killed (signal {failure.signal_name()}); the launcher stopped "
                "the others: the next attempt resumes from the last checkpoint",
            ) from None
        raise RuntimeError(
            f"rank {rank} of {cfg.train.devices} failed (exit code {failure.exitcode}); the launcher stopped the others"
        ) from None
    except SignalException:
        done = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").exists() else {}
        if done.get("status") != "interrupted":
            raise
        return done
    if "user_error" in out:
        raise UserError(out["user_error"])
    return out


def _rank_main(
    cfg_dict: dict[str, Any],
    run_dir: str,
    cache_dir: str,
    show: bool,
    stop_after: int | None,
    threads: int,
    stop_on_term: bool,
) -> dict[str, Any]:
    """One rank of `launch_ranks` (module level: the agent starts it in a fresh interpreter)."""
    if stop_on_term:
        stop_on_sigterm()
    torch.set_num_threads(threads)
    cfg = config_from_dict(cfg_dict)
    cfg.train.threads = 0  # set above, per rank
    try:
        return train(cfg, Path(run_dir), Path(cache_dir), show, stop_after=stop_after)
    except UserError as e:
        return {"user_error": str(e)}
    finally:
        distributed.close()
