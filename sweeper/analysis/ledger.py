"""What a study cost, from the trials' cost ledgers (`trainer.ledger`), against the naive protocol.

The naive protocol trains every grid point to its full `train.iters` and repeats the pre-training in every
trial (no cache, no halving). Its device-seconds are priced at the rates this study measured: GAN and
pre-training device-seconds per iteration, summed over the study's ledgers. A reused trial (same config
as a trial trained earlier) has no ledger: it cost nothing, but the naive protocol trains it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from optuna.storages import BaseStorage

from sweeper.core.workspace import point_key
from trainer.ledger import read


def repeated_iters(lines: list[dict[str, Any]]) -> int:
    """GAN iterations trained more than once: a segment starting below the furthest step reached before it."""
    repeated, reached = 0, 0
    for line in lines:
        repeated += max(0, min(line["to_step"], reached) - line["from_step"])
        reached = max(reached, line["to_step"])
    return repeated


@dataclass
class Totals:
    """Sums over ledger lines (one or many trials)."""

    trials: int = 0  # trial folders with a ledger
    segments: int = 0  # train() calls
    iters: int = 0  # GAN iterations trained
    repeated: int = 0  # of which trained twice
    wall_s: float = 0.0
    device_s: float = 0.0
    pretrain_iters: int = 0
    pretrain_device_s: float = 0.0
    pretrain_reused: int = 0  # segments that took their pre-training from the cache
    devices: set[str] = field(default_factory=set)

    def add(self, lines: list[dict[str, Any]]) -> Totals:
        """Add one trial's ledger."""
        if not lines:
            return self
        self.trials += 1
        self.segments += len(lines)
        self.repeated += repeated_iters(lines)
        for line in lines:
            share = line["device_s"] / line["wall_s"] if line["wall_s"] > 0 else 1.0  # threads, or 1 GPU
            self.iters += line["iters"]
            self.wall_s += line["wall_s"]
            self.device_s += line["device_s"]
            self.pretrain_iters += line["pretrain_iters"]
            self.pretrain_device_s += line["pretrain_s"] * share
            self.pretrain_reused += line["pretrain"] == "reused"
            if line["device"]:  # None: a stalled job's time, on a device its folder never recorded
                self.devices.add(line["device"])
        return self

    def merge(self, other: Totals) -> Totals:
        for f in fields(self):  # counts and sums add up; the sets of devices unite
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            setattr(self, f.name, mine | theirs if isinstance(mine, set) else mine + theirs)
        return self

    @property
    def gan_rate(self) -> float | None:
        """Device-seconds per GAN iteration (setup and validation included), None without any."""
        return (self.device_s - self.pretrain_device_s) / self.iters if self.iters else None

    @property
    def pretrain_rate(self) -> float | None:
        return self.pretrain_device_s / self.pretrain_iters if self.pretrain_iters else None

    @property
    def unit(self) -> str:
        """What device-seconds are: GPU-seconds, CPU core-seconds, or a mix."""
        return {frozenset({"cuda"}): "GPU-s", frozenset({"cpu"}): "CPU core-s"}.get(frozenset(self.devices), "device-s")


@dataclass
class StageCost:
    """One stage: what its ledgers say it spent, and what the naive protocol would have."""

    stage: str
    points: int  # grid points
    spent: Totals
    naive_iters: int  # points x train.iters
    naive_pretrain_iters: int  # points x train.pretrain_iters (0 with train.from_scratch)

    def naive_device_s(self, gan_rate: float | None, pretrain_rate: float | None) -> float | None:
        """The naive protocol priced at the given rates (None when the GAN rate is unknown)."""
        if gan_rate is None:
            return None
        return self.naive_iters * gan_rate + self.naive_pretrain_iters * (pretrain_rate or 0.0)


def trial_dirs(storage: BaseStorage, study_id: int) -> dict[tuple, list[Path]]:
    """Grid point -> its trial folders (attempts of a point share one), from the stage's Optuna trials."""
    out: dict[tuple, list[Path]] = {}
    for t in storage.get_all_trials(study_id, deepcopy=False):
        if "trial_dir" in t.user_attrs:
            folders = out.setdefault(point_key(t.params), [])
            if Path(t.user_attrs["trial_dir"]) not in folders:
                folders.append(Path(t.user_attrs["trial_dir"]))
    return out


def stage_cost(storage: BaseStorage, stage: str, study_id: int) -> StageCost:
    """Sum a stage's ledgers; the naive budget from each point's config.yaml (where one was written)."""
    spent, naive, naive_pre = Totals(), 0, 0
    points = trial_dirs(storage, study_id)
    for folders in points.values():
        for folder in folders:
            spent.add(read(folder))
        config = next(
            (yaml.safe_load((f / "config.yaml").read_text()) for f in folders if (f / "config.yaml").exists()), None
        )
        if config:
            naive += config["train"]["iters"]
            naive_pre += 0 if config["train"]["from_scratch"] else config["train"]["pretrain_iters"]
    return StageCost(stage, len(points), spent, naive, naive_pre)


def study_costs(storage: BaseStorage, stages: dict[str, int]) -> list[StageCost]:
    return [stage_cost(storage, name, sid) for name, sid in stages.items()]


def cost_rows(costs: list[StageCost]) -> list[dict[str, Any]]:
    """One row per stage and one for the study: spent and naive iterations and device-seconds, and the ratios.

    The naive device-seconds use the study-wide rates (an average where archs mix), so every stage is priced
    alike (a stage that reused its pre-training from the cache still pays for it naively).
    """
    total = Totals()
    for c in costs:
        total.merge(c.spent)
    study = StageCost("study", sum(c.points for c in costs), total, sum(c.naive_iters for c in costs),
                      sum(c.naive_pretrain_iters for c in costs))  # fmt: skip
    rows = []
    for c in [*costs, study]:
        naive_s = c.naive_device_s(total.gan_rate, total.pretrain_rate)
        rows.append({
            "stage": c.stage, "trials": c.spent.trials, "gan_iters": c.spent.iters, "naive_gan_iters": c.naive_iters,
            "pretrain_iters": c.spent.pretrain_iters, "naive_pretrain_iters": c.naive_pretrain_iters, "repeated_iters": c.spent.repeated,
            "iters_ratio": _ratio(c.spent.iters + c.spent.pretrain_iters, c.naive_iters + c.naive_pretrain_iters),
            "device_s": round(c.spent.device_s, 1), "naive_device_s": None if naive_s is None else round(naive_s, 1),
            "device_ratio": _ratio(c.spent.device_s, naive_s), "unit": total.unit,
        })  # fmt: skip
    return rows


def _ratio(spent: float, naive: float | None) -> float | None:
    return round(spent / naive, 3) if naive else None


def status_lines(costs: list[StageCost]) -> list[str]:
    """`sweeper status`'s cost summary: per stage and for the study, spent vs naive."""
    lines = []
    for r in cost_rows(costs):
        vs = f" = {r['device_ratio']:.0%} of naive" if r["device_ratio"] is not None else ""
        lines.append(
            f"cost {r['stage']}: {r['gan_iters']}/{r['naive_gan_iters']} GAN iters (naive), "
            f"{r['pretrain_iters']}/{r['naive_pretrain_iters']} pre-training iters, {r['repeated_iters']} repeated; "
            f"{r['device_s']:.0f} {r['unit']}{vs}"
        )
    return lines
