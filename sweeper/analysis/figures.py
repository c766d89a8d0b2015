"""The report's figures (matplotlib, Agg): metrics against mu, metrics per beta, an LPIPS bar chart per
method and set (the paper's Fig. 2), validation curves per grid point (a band over its repeats), a grid of
the same crops across settings (Figs. 6-7), and the rank check of successive halving. Each function returns
PNG bytes; the caller writes and logs them."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sweeper.analysis.runs import HIGHER_IS_BETTER, LABELS, METRICS, RunRecord

UNITS = {"psnr": " (dB)", "ssim": "", "lpips": ""}


def axis_label(metric: str) -> str:
    """`PSNR (dB) ↑`: the metric, its unit and which way is better."""
    return f"{LABELS[metric]}{UNITS[metric]} {'↑' if HIGHER_IS_BETTER[metric] else '↓'}"


def measured(values: dict[str, list[float]]) -> list[str]:
    """The metrics (in METRICS order) with at least one finite value: the panels worth drawing."""
    return [m for m in METRICS if any(math.isfinite(v) for v in values.get(m, []))]


def unmeasured_note(runs: list[RunRecord], sets: list[str]) -> str:
    """The caption's note on panels left out, e.g. ` LPIPS was not measured (no AlexNet weights): no panel.`"""
    shown = measured({m: [r.value(s, m) for r in runs for s in sets] for m in METRICS})
    missing = [LABELS[m] for m in METRICS if m not in shown]
    return (
        f" {', '.join(missing)} was not measured (no AlexNet ImageNet weights; see `sweeper weights status`), so its panel is left out."
        if missing
        else ""
    )


def stopped_note(runs: list[RunRecord]) -> str:
    """The caption's note on trials stopped by successive halving, drawn hollow (points) or hatched (bars)."""
    if not any(r.stopped_at is not None for r in runs):
        return ""
    return " Hollow points and hatched bars: trials stopped by successive halving, their values at the budget they reached."


def panels(metrics: list[str], title: str | None) -> tuple[Figure, list[Axes]]:
    """One panel per metric, laid out so that tick labels never run into the next panel."""
    fig, axes = plt.subplots(
        1, max(len(metrics), 1), figsize=(4.4 * max(len(metrics), 1), 3.6), squeeze=False, layout="constrained"
    )
    for ax, metric in zip(axes[0], metrics):
        ax.set_ylabel(axis_label(metric))
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.yaxis.get_major_formatter().set_useOffset(False)
        ax.grid(alpha=0.3)
        ax.set_axisbelow(True)
    if title:
        fig.suptitle(title)
    return fig, list(axes[0])


def legend_below(fig: Figure, axes: list[Axes]) -> None:
    """One legend for the figure, under its panels and inside its bounds."""
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8, frameon=False)


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


Spread = dict[str, dict[str, float]]  # run id -> "<set>/<metric>" -> the std over that point's repeats


def error(spread: Spread | None, run: RunRecord, set_name: str, metric: str) -> float:
    """The error bar of a point (the std over its repeats; NaN: none)."""
    return (spread or {}).get(run.run_id, {}).get(f"{set_name}/{metric}", math.nan)


def metrics_vs_mu(runs: list[RunRecord], sets: list[str], title: str, spread: Spread | None = None) -> bytes:
    """One panel per measured metric: each set's value against mu on a log axis, mu=inf (the VGG loss alone)
    as its own labelled point right of the largest finite mu, past a break in the axis; error bars = the std
    over a point's repeats (`spread`)."""
    finite = sorted((r for r in runs if not math.isinf(r.mu)), key=lambda r: r.mu)
    vgg_only = [r for r in runs if math.isinf(r.mu)][-1:]
    mus = [r.mu for r in finite]
    at_inf = max(mus, default=1.0) * 4  # where mu=inf is drawn
    metrics = measured({m: [r.value(s, m) for r in runs for s in sets] for m in METRICS})
    fig, axes = panels(metrics, title)
    for ax, metric in zip(axes, metrics):
        for k, s in enumerate(sets):
            ax.plot(mus, [r.value(s, metric) for r in finite], "-", color=f"C{k}", label=s)
            for x, r, marker in [(r.mu, r, "o") for r in finite] + [(at_inf, r, "D") for r in vgg_only]:
                face = "none" if r.stopped_at is not None else f"C{k}"
                ax.plot(
                    [x],
                    [r.value(s, metric)],
                    marker,
                    color=f"C{k}",
                    markerfacecolor=face,
                    markersize=7 if marker == "D" else 6,
                )
                if not math.isnan(error(spread, r, s, metric)):
                    ax.errorbar([x], [r.value(s, metric)], yerr=[error(spread, r, s, metric)], color=f"C{k}", capsize=3)
        ax.set_xscale("log")
        ticks = mus + ([at_inf] if vgg_only else [])
        ax.set_xticks(ticks, [f"{m:g}" for m in mus] + (["∞"] if vgg_only else []))
        ax.minorticks_off()
        ax.set_xlim(min(ticks) / 1.6, max(ticks) * 1.6)
        if vgg_only and mus:
            ax.axvspan(mus[-1] * 1.6, at_inf / 1.6, color="0.9", zorder=0)  # the break between finite mu and inf
        ax.set_xlabel("μ (log scale; ◆ ∞ = VGG loss only)" if vgg_only else "μ (log scale)")
    if any(r.stopped_at is not None for r in runs):
        axes[0].plot([], [], "o", color="0.4", markerfacecolor="none", label="stopped by halving")
    legend_below(fig, axes)
    return png(fig)


def metrics_per_beta(runs: list[RunRecord], sets: list[str], title: str, spread: Spread | None = None) -> bytes:
    """`per_beta_figure` as PNG."""
    return png(per_beta_figure(runs, sets, title, spread))


def per_beta_figure(runs: list[RunRecord], sets: list[str], title: str, spread: Spread | None = None) -> Figure:
    """One panel per measured metric: grouped bars, beta layers on the x axis, one bar per set; error bars =
    the std over a point's repeats (`spread`)."""
    metrics = measured({m: [r.value(s, m) for r in runs for s in sets] for m in METRICS})
    fig, axes = panels(metrics, title)
    x = np.arange(len(runs))
    width = 0.8 / max(len(sets), 1)
    for ax, metric in zip(axes, metrics):
        ends: list[float] = []  # each bar's top, less and plus its error
        for k, s in enumerate(sets):
            hatch = ["//" if r.stopped_at is not None else None for r in runs]
            yerr = [0.0 if math.isnan(error(spread, r, s, metric)) else error(spread, r, s, metric) for r in runs]
            ax.bar(x + k * width, [r.value(s, metric) for r in runs], width, label=s, hatch=hatch, edgecolor="white",
                   yerr=yerr if any(yerr) else None, capsize=3)  # fmt: skip
            ends += [r.value(s, metric) + sign * e for r, e in zip(runs, yerr) for sign in (-1, 1)]
        ax.set_xticks(x + width * (len(sets) - 1) / 2, [r.beta for r in runs])
        ax.set_xlabel("β (ResNet feature layers)")
        values = [v for v in ends if not math.isnan(v)]
        lo, hi = min(values), max(values)  # bars differ by little: zoom on their range, error bars whole, not from 0
        pad = (hi - lo) * 0.5 or abs(hi) * 0.05 or 1.0
        ax.set_ylim(lo - pad, hi + pad)
    if any(r.stopped_at is not None for r in runs):
        axes[0].bar([0], [math.nan], color="0.6", hatch="//", edgecolor="white", label="stopped by halving")
    legend_below(fig, axes)
    return fig


def lpips_bars(methods: list[str], sets: list[str], values: list[list[float]], title: str) -> bytes:
    """LPIPS per method (bars) and set (groups), lower is better, as the paper's Fig. 2."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(sets) * len(methods) / 2), 3.8), layout="constrained")
    x = np.arange(len(sets))
    width = 0.8 / len(methods)
    for k, (method, row) in enumerate(zip(methods, values)):
        bars = ax.bar(x + k * width, row, width, label=method)
        ax.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=2)
    ax.set_xticks(x + width * (len(methods) - 1) / 2, sets)
    ax.set_ylabel(axis_label("lpips"))
    ax.margins(y=0.15)  # room for the value labels
    ax.set_title(title)
    legend_below(fig, [ax])
    return png(fig)


History = list[tuple[int, float]]  # (step, value) of one training's validations


def over_repeats(runs: list[History]) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """The steps every repeat validated at, and the mean, min and max over the repeats there."""
    steps = sorted(set.intersection(*(set(dict(run)) for run in runs)))
    values = np.array([[dict(run)[s] for s in steps] for run in runs]).reshape(len(runs), len(steps))
    return steps, values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def curves_figure(histories: dict[str, dict[str, list[History]]], set_name: str) -> Figure:
    """Per grid point, each measured metric on `set_name` against the training step; `histories[label][metric]`
    holds one history per repeat: a point with several is drawn as the mean over its repeats with a light band
    from their min to their max (the seed-to-seed spread, not an interval; the legend's title says so when every
    point has the same repeats, else each entry). The legend stands right of the panels, one entry a line."""
    values = {m: [v for per in histories.values() for run in per.get(m, []) for _, v in run] for m in METRICS}
    metrics = measured(values)
    counts = {len([run for run in runs if run]) for per in histories.values() for runs in per.values()} - {0}
    common = counts.pop() if len(counts) == 1 and min(counts) > 1 else None
    fig, axes = panels(metrics, f"Validation on {set_name}")
    for ax, metric in zip(axes, metrics):
        for k, (label, per_metric) in enumerate(histories.items()):
            runs = [run for run in per_metric.get(metric, []) if run]
            if len(runs) == 1:
                ax.plot(*zip(*runs[0]), "o-", color=f"C{k}", markersize=3, label=label)
            elif runs:
                steps, mean, low, high = over_repeats(runs)
                ax.plot(steps, mean, "o-", color=f"C{k}", markersize=3,
                        label=label if common else f"{label}: mean of {len(runs)} repeats, band min-max")  # fmt: skip
                ax.fill_between(steps, low, high, color=f"C{k}", alpha=0.1, linewidth=0)
        ax.set_xlabel("GAN iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        note = f"each line: the mean of {common} repeats,\nits band their min-max" if common else None
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False, title=note, title_fontsize=8)
    return fig


def validation_curves(histories: dict[str, dict[str, list[History]]], set_name: str) -> bytes:
    """`curves_figure` as PNG."""
    return png(curves_figure(histories, set_name))


def comparison_grid(images: list[str], columns: list[str], tiles: list[list[np.ndarray | None]], title: str) -> bytes:
    """Rows = crops (`images`), columns = settings; `tiles[i][j]` is an HxWx3 uint8 array or None (missing)."""
    fig, axes = plt.subplots(len(images), len(columns), figsize=(1.9 * len(columns), 2.0 * len(images)), squeeze=False)
    for i, name in enumerate(images):
        for j, column in enumerate(columns):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if tiles[i][j] is not None:
                ax.imshow(tiles[i][j])
            if i == 0:
                ax.set_title(column, fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(title)
    return png(fig)


def feature_maps(image: np.ndarray, rows: list[tuple[str, list[np.ndarray]]], channels: list[str], title: str) -> bytes:
    """Fig. 4: the input image, then one row per extractor of its feature maps (each channel scaled to its own
    range, viridis: yellow = high)."""
    fig, axes = plt.subplots(
        len(rows), len(channels) + 1, figsize=(2.3 * (len(channels) + 1), 2.4 * len(rows)), squeeze=False
    )
    for i, (label, maps) in enumerate(rows):
        axes[i][0].imshow(image)
        axes[i][0].set_ylabel(label, fontsize=9)
        for j, fmap in enumerate(maps, start=1):
            axes[i][j].imshow(fmap, cmap="viridis")
            if i == 0:
                axes[i][j].set_title(channels[j - 1], fontsize=9)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("input", fontsize=9)
    fig.suptitle(title, fontsize=9)
    return png(fig)


def rank_check(stages: dict[str, list[tuple[float, float, float, bool]]]) -> bytes:
    """Per stage, Kendall's tau and Spearman's rho of each rung's ranking with the final one against the rung's
    budget as a fraction of train.iters; `stages[name] = [(fraction, tau, rho, winner_alive)]`. A rung where
    halving would have dropped the final winner is marked with a red cross. A stage whose correlations are all
    undefined (every trial tied) gets no lines, only a note in the legend."""
    fig, ax = plt.subplots(figsize=(5.6, 3.6), layout="constrained")
    fractions = sorted({r[0] for rungs in stages.values() for r in rungs})
    for k, (name, rungs) in enumerate(stages.items()):
        x = [r[0] for r in rungs]
        if all(math.isnan(v) for r in rungs for v in r[1:3]):
            ax.plot([], [], " ", label=f"{name}: undefined (every trial tied)")
            continue
        ax.plot(x, [r[1] for r in rungs], "o-", color=f"C{k}", label=f"{name}: Kendall tau")
        ax.plot(x, [r[2] for r in rungs], "s--", color=f"C{k}", alpha=0.6, label=f"{name}: Spearman rho")
        lost = [(r[0], r[1]) for r in rungs if not r[3]]
        if lost:
            ax.plot(*zip(*lost), "x", color="red", markersize=10, label=f"{name}: winner not kept")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{f:.2g}" for f in fractions])
    ax.minorticks_off()
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("rung budget / train.iters (log scale)")
    ax.set_ylabel("agreement with the final ranking")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Successive halving replayed: rank agreement per rung")
    return png(fig)
