"""`sweeper plan study=NAME preset=...`: what a study will cost, before anything runs (issue 12).

Per stage: the grid points and their repeats (`repeats=R`: R trainings per point, one per seed; `repeats=auto`:
racing's worst case, `max_repeats` per point and at most `max_trainings` in all), the trainings they need
(equal configs, seed included, train once, and a point equal to an earlier stage's winner is reused), and
trial-iterations and device-hours three ways:
- naive: every point to `train.iters`, pre-training repeated in every trial;
- `scheduler=none`: every distinct training to `train.iters`, each pre-training once (the shared cache;
  none where the workspace's cache holds it already);
- `scheduler=sha`: synchronous successive halving over the distinct trainings (`sweeper.core.halving`:
  `rung_budgets`, `keep`, `iterations_spent`); asynchronous promotion spends about the same.
Device-seconds per iteration come from the workspace's cost ledgers of trainings of the same shape (arch,
network, patch, batch, device), all-in (setup and validation included); else from a few training steps of
each architecture measured now at the preset's shapes on this machine (validation excluded). Which one
was used is printed. It needs no training data: the pre-training counts as uncached where the data is not
there, and each training set's sub-image count (for the epochs a trial sees) comes from its prepared cache,
its images' headers or, before it is downloaded, the known count of a published set (DIV2K: 32,592).
A training on `train.devices=N` devices costs N x its wall time: ledgers of N-device trainings price it as they
measured it; a one-device rate is scaled by 1 / DDP_EFFICIENCY (a stated figure, the issue's goal for 2 GPUs,
not a measurement: `benchmarks/gpu.py` measures it on a machine with GPUs). The wall time of each stage's
longest training, on its N devices, is printed beside the device-hours.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from sweeper.analysis import ledger
from sweeper.core import halving
from sweeper.core.identity import config_hash
from sweeper.core.overrides import Options, check_max_trainings, parse, require_study, stage_repeats
from sweeper.core.repeats import unit_config, units
from sweeper.core.studies import AUTO, load
from sweeper.core.workspace import Workspace
from sweeper.search.executors import make_executor
from trainer.config import Config, build_config
from trainer.data import prepared_data_id, subimage_count
from trainer.errors import UserError
from trainer.image_sets import settle_sets
from trainer.train import pretrain_key

MEASURED_STEPS = 3  # timed steps per architecture, after one warm-up step
DDP_EFFICIENCY = 0.9  # speed-up on N devices / N, stated (2 GPUs >= 1.8x one, issue 21's goal), not measured


@dataclass(frozen=True)
class Rate:
    """Device-seconds per GAN and per pre-training iteration for one training shape."""

    gan_s: float
    pretrain_s: float
    unit: str  # "GPU-s" | "CPU core-s"
    source: str  # "ledgers (N trials)" | "measured now (K steps)"


@dataclass(frozen=True)
class StagePlan:
    stage: str
    points: int  # grid points
    repeats: str  # "3", or "auto (at most 5)" priced at its worst case
    trainings: int  # distinct trainings not reused from an earlier stage
    iters: int
    naive_iters: int  # GAN trial-iterations
    none_iters: int
    sha_iters: int
    sha_budgets: list[int]
    naive_pretrain_iters: int
    pretrain_iters: int  # with the cache (and what it already holds)
    naive_hours: float
    none_hours: float
    sha_hours: float
    wall_hours: float  # the stage's longest training, on its train.devices devices (CPU: per core)
    devices: int
    rate_source: str
    unit: str  # what the hours count: "GPU-hours" | "CPU core-hours" (mixed: "device-hours")
    data: str  # the training sets' sub-images and where that count comes from


def shape(cfg: dict[str, Any], device: str) -> str:
    """What a step's cost depends on (not mu or beta: the same networks run whatever their values)."""
    d = cfg["data"]
    devices = cfg["train"].get("devices", 1)
    return json.dumps(
        [
            cfg["arch"],
            cfg["upscale"],
            cfg["model"],
            d["hr_patch"],
            d["batch_size"],
            cfg["loss"]["perceptual"],
            device,
            devices,
        ]
    )


def ledger_rates(root: Path) -> dict[str, ledger.Totals]:
    """Shape -> summed cost ledgers of the workspace's trial folders."""
    out: dict[str, ledger.Totals] = {}
    for path in sorted(root.glob("trials/*/*/*/ledger.jsonl")):
        lines = ledger.read(path.parent)
        device = next((line["device"] for line in lines if line["device"]), None)  # (a stalled job's may be None)
        if device and (path.parent / "config.yaml").exists():
            cfg = yaml.safe_load((path.parent / "config.yaml").read_text())
            out.setdefault(shape(cfg, device), ledger.Totals()).add(lines)
    return out


def measure(cfg: Config) -> Rate:
    """Time a few GAN steps and pre-training steps at `cfg`'s shapes on this machine (random weights, random data)."""
    import torch
    import torch.nn.functional as F

    from trainer.train import Gan, make_optimizer, pick_device

    cfg = dataclasses.replace(cfg, weights="random")  # the extractors' weights do not change a step's cost
    device = pick_device(cfg)
    gan = Gan.build(cfg, device)
    hr = torch.rand(cfg.data.batch_size, 3, cfg.data.hr_patch, cfg.data.hr_patch, device=device)
    lr = torch.rand(
        cfg.data.batch_size, 3, cfg.data.hr_patch // cfg.upscale, cfg.data.hr_patch // cfg.upscale, device=device
    )
    opt, _ = make_optimizer(gan.g, cfg.train.pretrain_lr, [], cfg)

    def pretrain_step(_: int) -> None:
        opt.zero_grad(set_to_none=True)
        F.l1_loss(gan.g(lr), hr).backward()
        opt.step()

    def seconds(step) -> float:
        step(0)  # warm-up (cuDNN autotuning, allocator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(MEASURED_STEPS):
            step(i + 1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / MEASURED_STEPS

    share = 1 if device.type == "cuda" else torch.get_num_threads()
    gan_s = seconds(lambda _: gan.step(lr, hr)) * share
    pre_s = seconds(pretrain_step) * share
    unit = "GPU-s" if device.type == "cuda" else "CPU core-s"
    return Rate(gan_s, pre_s, unit, f"measured now on {device.type} ({MEASURED_STEPS} steps, validation excluded)")


def rate_for(cfg: Config, found: dict[str, ledger.Totals], measured: dict[str, Rate]) -> Rate:
    """The workspace's ledgers for this shape when they have GAN iterations, else a measurement (made once per shape)."""
    import torch

    device = (
        "cuda"
        if cfg.train.device.startswith("cuda") or (cfg.train.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    key = shape(cfg.to_dict(), device)
    totals = found.get(key)
    if totals is not None and totals.gan_rate is not None:
        pre = totals.pretrain_rate
        if pre is None:  # every trial reused its pre-training from the cache: measure a pre-training step
            pre = measured.setdefault(key, measure(cfg)).pretrain_s
        return Rate(totals.gan_rate, pre, totals.unit, f"ledgers of {totals.trials} trial(s) in the workspace")
    one = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, devices=1))  # measured on one device
    one_key = shape(one.to_dict(), device)
    if one_key not in measured:
        measured[one_key] = measure(one)
    rate, n = measured[one_key], cfg.train.devices
    if n == 1:
        return rate
    return Rate(
        rate.gan_s / DDP_EFFICIENCY,
        rate.pretrain_s / DDP_EFFICIENCY,
        rate.unit,
        f"{rate.source}, on {n} devices at a stated scaling efficiency of {DDP_EFFICIENCY}",
    )


def data_line(cfg: Config, cache_dir: Path) -> str:
    """Each training set's sub-images, where that count comes from, and the epochs one training sees."""
    parts = []
    for name in cfg.data.train_sets:
        count, source = subimage_count(cfg, name, cache_dir)
        epochs = f", {cfg.train.iters * cfg.data.batch_size / count:.3g} epochs per training" if count else ""
        parts.append(f"{name}: {f'{count:,}' if count else '?'} sub-images ({source}{epochs})")
    return "; ".join(parts)


def plan_stage(name: str, cfgs: list[Config], repeats: int, seen: set[str], cached: set[str], cache_dir: Path, opts: Options,
               found: dict[str, ledger.Totals], measured: dict[str, Rate]) -> StagePlan:  # fmt: skip
    """One stage's plan over its trainings `cfgs` (every grid point's `repeats`); `seen` (config hashes trained by
    earlier stages) and `cached` (pre-training keys) grow."""
    identities = {config_hash(c.to_dict()): c for c in cfgs}
    new = {k: c for k, c in identities.items() if k not in seen}
    seen |= set(new)
    iters = max(c.train.iters for c in cfgs)
    new_points = -(-len(new) // repeats)  # halving keeps or stops a point with all its repeats
    budgets = halving.rung_budgets(iters, max(new_points, 1), opts.eta, opts.min_iters)
    survivors = [new_points]
    for _ in budgets[1:]:
        survivors.append(halving.keep(survivors[-1], opts.eta, draining=True))
    sha_iters = halving.iterations_spent(survivors, budgets) * repeats if new else 0
    keys = {
        id(c): pretrain_key(c, prepared_data_id(c, cache_dir) or "unprepared") for c in new.values()
    }  # unprepared: not cached
    pre_needed = {keys[id(c)]: c for c in new.values() if not c.train.from_scratch and keys[id(c)] not in cached}
    cached |= set(pre_needed)
    rates = {
        id(c): rate_for(c, found, measured) for c in cfgs
    }  # one rate per shape (an arch, say), shared by its configs

    def gan_s(configs) -> float:
        return sum(c.train.iters * rates[id(c)].gan_s for c in configs)

    def pretrain_s(configs) -> float:
        return sum(c.train.pretrain_iters * rates[id(c)].pretrain_s for c in configs if not c.train.from_scratch)

    sha_s = (
        gan_s(new.values()) * sha_iters / (len(new) * iters) if new else 0.0
    )  # halving's iterations at the stage's mean rate
    sources = {f"{c.arch}: {rates[id(c)].source}: {rates[id(c)].gan_s:.3g} {rates[id(c)].unit}/GAN iter, "
               f"{rates[id(c)].pretrain_s:.3g} {rates[id(c)].unit}/pre-training iter" for c in cfgs}  # fmt: skip
    return StagePlan(
        stage=name, points=len(cfgs) // repeats, repeats=str(repeats), trainings=len(new), iters=iters,
        naive_iters=len(cfgs) * iters, none_iters=len(new) * iters, sha_iters=sha_iters, sha_budgets=budgets,
        naive_pretrain_iters=sum(c.train.pretrain_iters for c in cfgs if not c.train.from_scratch),
        pretrain_iters=sum(c.train.pretrain_iters for c in pre_needed.values()),
        naive_hours=(gan_s(cfgs) + pretrain_s(cfgs)) / 3600,
        none_hours=(gan_s(new.values()) + pretrain_s(pre_needed.values())) / 3600,
        sha_hours=(sha_s + pretrain_s(pre_needed.values())) / 3600,
        wall_hours=max((gan_s([c]) + pretrain_s([c])) / c.train.devices for c in cfgs) / 3600,
        devices=max(c.train.devices for c in cfgs),
        rate_source="; ".join(sorted(sources)), data=data_line(cfgs[0], cache_dir),
        unit=hours_unit({rates[id(c)].unit for c in cfgs}),
    )  # fmt: skip


def plan(tokens: list[str]) -> tuple[list[StagePlan], Options]:
    """Parse and validate like `sweeper run` (nothing is created), then plan every stage."""
    opts = parse(tokens)
    study = load(require_study(opts))
    check_max_trainings(opts, study.stages)
    ws = Workspace.resolve(opts.workspace, opts.storage, opts.tracking_uri)
    make_executor(opts.executor, opts.executor_options, ws.root, opts.preset)  # validates the executor options
    searched = {k for s in study.stages for k in s.searched_keys()}
    config = settle_sets(
        {**study.config, **{k: v for k, v in opts.config.items() if k not in searched}}, absent_ok=True
    )  # a data root's sets, as `sweeper run` settles them
    cached = {p.name.rsplit("-", 1)[1] for p in ws.cache_dir.glob("pretrain-*") if (p / "last.pt").exists()}
    found = ledger_rates(ws.root) if ws.root.is_dir() else {}
    seen: set[str] = set()
    measured: dict[str, Rate] = {}
    plans = []
    for (
        stage
    ) in study.stages:  # an alternating study's later stage runs at an earlier winner, which one is planned as reused
        repeats, max_repeats = stage_repeats(opts, stage)
        most = max_repeats if repeats == AUTO else int(repeats)
        trained = sorted(units(stage, most), key=lambda u: u.repeat)[: opts.max_trainings if repeats == AUTO else None]
        cfgs = [build_config(unit_config(config, stage, u.params)) for u in trained]
        p = plan_stage(stage.name, cfgs, most, seen, cached, ws.cache_dir, opts, found, measured)
        budget = f", {len(trained)} trainings under max_trainings={opts.max_trainings}" if opts.max_trainings else ""
        worst = f"auto (at most {most} per point{budget}: racing's worst case)"
        plans.append(dataclasses.replace(p, points=len(stage.points()), repeats=worst) if repeats == AUTO else p)
    return plans, opts


def hours_unit(units: set[str]) -> str:
    """ "GPU-hours" or "CPU core-hours" from the rates' units ("GPU-s", "CPU core-s"); "device-hours" when mixed."""
    return units.pop().replace("-s", "-hours") if len(units) == 1 else "device-hours"


def hours(value: float) -> str:
    """12,345 or 0.00778: whole hours once there are many, three significant digits below."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def main(tokens: list[str], fmt: str = "table") -> None:
    """`sweeper plan study=NAME [preset=...] [scheduler=sha scheduler.eta=3] [executor options] [--format json]`."""
    from sweeper.analysis.tables import rows_to_markdown

    if fmt not in ("table", "json"):
        raise UserError(f"--format {fmt}: choose table or json")
    plans, opts = plan(tokens)
    if fmt == "json":
        print(
            json.dumps(
                {
                    "scheduler": {"scheduler": opts.scheduler, "eta": opts.eta, "min_iters": opts.min_iters},
                    "stages": [asdict(p) for p in plans],
                },
                indent=1,
            )
        )
        return
    rows = [{"stage": p.stage, "points": p.points, "repeats": p.repeats, "trainings": p.trainings, "GAN iters naive / none / sha": f"{p.naive_iters} / {p.none_iters} / {p.sha_iters}",
             "pre-training iters naive / cached": f"{p.naive_pretrain_iters} / {p.pretrain_iters}",
             f"{p.unit} naive / none / sha": " / ".join(map(hours, (p.naive_hours, p.none_hours, p.sha_hours))),
             "one training's wall hours (devices)": f"{hours(p.wall_hours)} ({p.devices})"} for p in plans]  # fmt: skip
    total = {k: sum(getattr(p, k) for p in plans) for k in ("naive_hours", "none_hours", "sha_hours")}
    print(rows_to_markdown(rows))
    for p in plans:
        print(f"stage {p.stage}: scheduler=sha rungs at {p.sha_budgets} (eta={opts.eta}); rates {p.rate_source}")
        print(f"stage {p.stage} data: {p.data}")
    unit = hours_unit({p.unit for p in plans})
    print(f"study: {hours(total['naive_hours'])} {unit} naive, {hours(total['none_hours'])} with scheduler=none, "
          f"{hours(total['sha_hours'])} with scheduler=sha ({total['sha_hours'] / total['naive_hours']:.0%} of naive)")  # fmt: skip
