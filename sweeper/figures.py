"""The report's figures (matplotlib, Agg): metrics against mu, metrics per beta, an LPIPS bar chart per
method and set (the paper's Fig. 2), validation curves per trial, a grid of the same crops across
settings (Figs. 6-7), and the rank check of successive halving. Each function returns PNG bytes; the caller writes and logs them."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from sweeper.runs import LABELS, METRICS, RunRecord  # noqa: E402


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def metrics_vs_mu(runs: list[RunRecord], sets: list[str], title: str) -> bytes:
    """One panel per metric: each set's value against finite mu (log axis); mu=inf as a dashed line."""
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.4), squeeze=False)
    finite = sorted((r for r in runs if not math.isinf(r.mu)), key=lambda r: r.mu)
    vgg_only = [r for r in runs if math.isinf(r.mu)]
    for ax, metric in zip(axes[0], METRICS):
        for k, s in enumerate(sets):
            colour = f"C{k}"
            ax.plot([r.mu for r in finite], [r.value(s, metric) for r in finite], "o-", color=colour, label=s)
            for r in vgg_only:
                ax.axhline(r.value(s, metric), color=colour, linestyle="--", linewidth=1)
        if not any(math.isfinite(r.value(s, metric)) for r in runs for s in sets):  # e.g. LPIPS unavailable
            ax.set_title(f"{LABELS[metric]}: not measured")
            continue
        ax.set_xscale("log")
        ax.set_xlabel("mu (dashed: mu=inf, VGG loss only)")
        ax.set_title(LABELS[metric])
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    return png(fig)


def metrics_per_beta(runs: list[RunRecord], sets: list[str], title: str) -> bytes:
    """One panel per metric: grouped bars, beta layers on the x axis, one bar per set."""
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.4), squeeze=False)
    x = np.arange(len(runs))
    width = 0.8 / max(len(sets), 1)
    for ax, metric in zip(axes[0], METRICS):
        for k, s in enumerate(sets):
            ax.bar(x + k * width, [r.value(s, metric) for r in runs], width, label=s)
        ax.set_xticks(x + width * (len(sets) - 1) / 2, [r.beta for r in runs])
        ax.set_title(LABELS[metric])
        values = [r.value(s, metric) for r in runs for s in sets if not math.isnan(r.value(s, metric))]
        if values:  # bars differ by little: zoom on the range instead of starting at 0
            lo, hi = min(values), max(values)
            pad = (hi - lo) * 0.5 or abs(hi) * 0.05 or 1.0
            ax.set_ylim(lo - pad, hi + pad)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    return png(fig)


def lpips_bars(methods: list[str], sets: list[str], values: list[list[float]], title: str) -> bytes:
    """LPIPS per method (bars) and set (groups), lower is better, as the paper's Fig. 2."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(sets) * len(methods) / 2), 3.6))
    x = np.arange(len(sets))
    width = 0.8 / len(methods)
    for k, (method, row) in enumerate(zip(methods, values)):
        bars = ax.bar(x + k * width, row, width, label=method)
        ax.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=2)
    ax.set_xticks(x + width * (len(methods) - 1) / 2, sets)
    ax.set_ylabel("LPIPS (lower is better)")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return png(fig)


def validation_curves(histories: dict[str, dict[str, list[tuple[int, float]]]], set_name: str) -> bytes:
    """Per trial, each metric on `set_name` against the training step; `histories[label][metric] = [(step, value)]`."""
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], METRICS):
        for label, per_metric in histories.items():
            points = per_metric.get(metric, [])
            if points:
                ax.plot(*zip(*points), "o-", markersize=3, label=label)
        ax.set_xlabel("step")
        ax.set_title(f"{set_name} {LABELS[metric]}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return png(fig)


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


def rank_check(stages: dict[str, list[tuple[float, float, float, bool]]]) -> bytes:
    """Per stage, Kendall's tau and Spearman's rho of each rung's ranking with the final one against the rung's
    budget as a fraction of train.iters; `stages[name] = [(fraction, tau, rho, winner_alive)]`. A rung where
    halving would have dropped the final winner is marked with a red cross."""
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for k, (name, rungs) in enumerate(stages.items()):
        x = [r[0] for r in rungs]
        ax.plot(x, [r[1] for r in rungs], "o-", color=f"C{k}", label=f"{name}: Kendall tau")
        ax.plot(x, [r[2] for r in rungs], "s--", color=f"C{k}", alpha=0.6, label=f"{name}: Spearman rho")
        lost = [(r[0], r[1]) for r in rungs if not r[3]]
        if lost:
            ax.plot(*zip(*lost), "x", color="red", markersize=10, label=f"{name}: winner dropped")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("rung budget / train.iters")
    ax.set_ylabel("agreement with the final ranking")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Successive halving replayed: rank agreement per rung")
    return png(fig)
