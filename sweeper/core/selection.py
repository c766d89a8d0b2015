"""The validation metrics a study reports and picks its winner by: names, direction, tie-breaks, and the
selection rule (`select_by=`, `select.*=`) that `sweeper.analysis.stats` applies with its intervals."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.errors import UserError

METRICS = ("psnr", "ssim", "lpips")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False}
TIE_BREAK = {"lpips": "psnr", "psnr": "lpips", "ssim": "psnr"}  # the second metric that orders equal scores


def signed(metric: str, value: float | None) -> float:
    """`value` of `metric` as a sort key where smaller is better: negated where higher is better; a missing or
    NaN value ranks last (inf)."""
    if value is None or value != value:
        return float("inf")
    return -value if HIGHER_IS_BETTER[metric] else value


def rank(select_by: str, metrics: dict[str, float]) -> tuple[float, float]:
    """Sort key of a trial's mean metrics, best first: the selection metric, then its tie-break metric."""
    tie = TIE_BREAK[select_by]
    return signed(select_by, metrics.get(f"mean/{select_by}")), signed(tie, metrics.get(f"mean/{tie}"))


TIE_BREAKS = ("best_mean", "simplest")
PERCEPTUAL_ORDER = ("vgg", "static", "dp")  # simplest first: VGG loss only, + a static ResNet term, + dynamic weighting
ARCH_ORDER = ("srgan", "esrgan")


@dataclass(frozen=True)
class Rule:
    """How a stage picks its winner (`select_by=`, `select.*=`; `sweeper.analysis.stats.decide` applies it).

    `metrics`: the first decides, each later one only among the points the earlier ones left tied
    (`select_by=lpips,psnr`). `min_effect` (units of the first metric) is the practical margin below which a
    consistent difference still counts as a tie (default 0). `tie_break` picks among tied points:
    `best_mean` (the best mean, as without statistics) or `simplest` (`simplicity`). `alpha`: 1 - the
    intervals' level."""

    metrics: tuple[str, ...] = ("lpips",)
    min_effect: float = 0.0
    tie_break: str = "best_mean"
    alpha: float = 0.05

    @property
    def metric(self) -> str:
        return self.metrics[0]


def parse_select_by(text: str) -> tuple[str, ...]:
    """`lpips` or `lpips,psnr` -> the metrics in order; UserError naming the bad one."""
    names = tuple(n.strip() for n in str(text).split(",") if n.strip())
    bad = [n for n in names if n not in METRICS] or ([] if names and len(set(names)) == len(names) else [str(text)])
    if bad:
        raise UserError(
            f"select_by={text!r} is not valid; choose one of {', '.join(sorted(METRICS))}, or several in order without repeats (lpips,psnr)"
        )
    return names


def simplicity(settings: dict[str, str]) -> tuple[float, ...]:
    """How far a setting departs from the plain VGG perceptual loss, smaller = simpler (`select.tie_break=simplest`):
    the architecture (SRGAN before ESRGAN), the loss (VGG, static, DP), then the weight of the ResNet term
    1/mu (mu=inf: none), then the ResNet stage (beta1_3 before beta4_3)."""
    mu = float(settings.get("mu", "inf"))
    beta = settings.get("beta", "")
    return (
        ARCH_ORDER.index(settings["arch"]) if settings.get("arch") in ARCH_ORDER else 0,
        PERCEPTUAL_ORDER.index(settings["loss.perceptual"])
        if settings.get("loss.perceptual") in PERCEPTUAL_ORDER
        else 0,
        0.0 if mu == float("inf") else 1 / mu,
        float(beta[4]) if beta[:4] == "beta" and beta[4:5].isdigit() else 0.0,
    )
