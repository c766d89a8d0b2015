"""Proxy-vs-target agreement over the shared hyperparameter settings (paper section 4.3.4, Table 4).

For each validation set and metric: Spearman's rho, Kendall's tau-b, the number of discordant pairs out of
n(n-1)/2, the exact one-sided permutation p-value (all n! orderings of the target's scores), and whether
the proxy and the target agree on the best and the worst setting. With the paper's four settings these
numbers are descriptive: the smallest one-sided p is 1/24 and the smallest two-sided p is 1/12, so no
two-sided test can reach 0.05 (scipy's asymptotic p-values are wrong at this size and are not used).

Promotion is gated on agreement of the best setting under the selection metric, not on a p-value. When
one side's scores are all equal, or its best score is shared by several settings, there is no ranking (or
no best) to agree with: the row says "undefined" (statistics NaN where they are) and the gate refuses.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import cast

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric
from scipy.stats import rankdata

from sweeper.analysis import evidence, stats
from sweeper.analysis.runs import (
    HIGHER_IS_BETTER,
    LABELS,
    METRICS,
    RunRecord,
    experiment_ids,
    find_runs,
    finished,
    open_client,
    read_artifact,
)
from sweeper.analysis.tables import rows_to_csv, rows_to_markdown
from sweeper.core.overrides import parse
from trainer.config import ARCHS, check_choice
from trainer.errors import UserError

EXACT_MAX_N = 8  # 8! = 40,320 orderings; above that a fixed-seed sample of orderings is used
SAMPLED_PERMUTATIONS = 40_320


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of vector `a` with each row of `b`."""
    a = a - a.mean()
    b = b - b.mean(axis=-1, keepdims=True)
    den = math.sqrt((a * a).sum()) * np.sqrt((b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (b @ a) / den


def _pair_signs(x: np.ndarray) -> np.ndarray:
    """sign(x_i - x_j) for every pair i < j, along the last axis."""
    i, j = np.triu_indices(x.shape[-1], k=1)
    return np.sign(x[..., i] - x[..., j])


def _kendall_rows(x: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of `x` with each row of `ys`: (C - D) / sqrt((n0 - n1)(n0 - n2))."""
    sx, sy = _pair_signs(x), _pair_signs(ys)
    den = np.sqrt(np.count_nonzero(sx) * np.count_nonzero(sy, axis=-1).astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sy @ sx) / den


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of the ranks."""
    return float(_pearson_rows(rankdata(x), rankdata(y)[None])[0])


def kendall(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b (ties handled as scipy.stats.kendalltau's default)."""
    return float(_kendall_rows(x, y[None])[0])


def discordant_pairs(x: np.ndarray, y: np.ndarray) -> int:
    """Pairs ordered one way by x and the other way by y (ties count as neither)."""
    return int(((_pair_signs(x) * _pair_signs(y)) < 0).sum())


def orderings(n: int) -> tuple[np.ndarray, bool]:
    """Every permutation of range(n) when n <= EXACT_MAX_N (exact=True), else a fixed-seed sample."""
    if n <= EXACT_MAX_N:
        return np.array(list(itertools.permutations(range(n)))), True
    rng = np.random.default_rng(0)
    return np.array([rng.permutation(n) for _ in range(SAMPLED_PERMUTATIONS)]), False


def permutation_p(x: np.ndarray, y: np.ndarray) -> tuple[float, float, bool]:
    """One-sided (positive association) permutation p-values of Spearman's rho and Kendall's tau.

    p = P(stat(x, y permuted) >= observed) over all n! orderings of y, each equally likely under
    independence; returns (p_rho, p_tau, exact). NaN when x or y is constant (no ranking to test).
    """
    perms, exact = orderings(len(x))
    if constant(x) or constant(y):
        return math.nan, math.nan, exact
    rho_all = _pearson_rows(rankdata(x), rankdata(y)[perms])  # the ranks of a permuted y are its permuted ranks
    tau_all = _kendall_rows(x, y[perms])

    def p(stats: np.ndarray, observed: float) -> float:
        hits = int(np.sum(stats >= observed - 1e-12))
        return hits / len(stats) if exact else (hits + 1) / (len(stats) + 1)  # a sample counts the observed order too

    return p(rho_all, spearman(x, y)), p(tau_all, kendall(x, y)), exact


def smallest_p(n: int) -> tuple[float, float]:
    """The smallest attainable (one-sided, two-sided) permutation p-values with n untied points."""
    one = 1 / math.factorial(n)
    return one, min(1.0, 2 * one)


def weakness_note(n: int) -> str:
    """How little n settings can show, said plainly next to the numbers."""
    one, two = smallest_p(n)
    reach = ", so no two-sided test can reach 0.05" if two > 0.05 else ""
    return (
        f"Descriptive only: with n={n} settings the smallest one-sided p is 1/{math.factorial(n)} = {one:.3g} "
        f"and the smallest two-sided p is {two:.3g}{reach}."
    )


def constant(values: np.ndarray) -> bool:
    return bool(np.all(values == values[0]))


def undefined_reason(side: str, values: np.ndarray, metric: str) -> str | None:
    """Why `values` cannot rank settings: all equal, or the best value shared (None when they can)."""
    if constant(values):
        return f"every {side} score is {values[0]:.4g}"
    best = values.max() if HIGHER_IS_BETTER[metric] else values.min()
    tied = int(np.sum(values == best))
    return f"{tied} settings tie for the {side}'s best ({best:.4g})" if tied > 1 else None


@dataclass(frozen=True)
class Agreement:
    """Proxy vs target on one validation set and metric."""

    set: str
    metric: str
    n: int
    spearman: float
    kendall: float
    discordant: int
    pairs: int
    p_spearman: float  # one-sided permutation p-value
    p_kendall: float
    exact: bool
    best_proxy: str
    best_target: str
    worst_proxy: str
    worst_target: str
    undefined: str | None = None  # why no ranking or no best exists (constant or tied-at-the-top scores)
    rho_ci: tuple[float, float] | None = (
        None  # 95 % bootstrap interval over images and repeats (None: no per-image values)
    )
    tau_ci: tuple[float, float] | None = None
    disagreement: str = "untested"  # where the bests differ: significant | not significant | untested

    @property
    def best_agrees(self) -> bool:
        return self.undefined is None and self.best_proxy == self.best_target

    @property
    def worst_agrees(self) -> bool:
        return self.worst_proxy == self.worst_target


def _best_worst(labels: list[str], values: np.ndarray, metric: str) -> tuple[str, str]:
    """The best and the worst setting (lower is better for LPIPS); the first listed wins a tie."""
    order = np.argsort(-values if HIGHER_IS_BETTER[metric] else values, kind="stable")
    return labels[order[0]], labels[order[-1]]


def agreement(set_name: str, metric: str, labels: list[str], proxy: np.ndarray, target: np.ndarray) -> Agreement:
    """All statistics for one set and metric; `proxy[i]` and `target[i]` are the scores of setting `labels[i]`."""
    n = len(labels)
    p_rho, p_tau, exact = permutation_p(proxy, target)
    best_p, worst_p = _best_worst(labels, proxy, metric)
    best_t, worst_t = _best_worst(labels, target, metric)
    return Agreement(
        set=set_name,
        metric=metric,
        n=n,
        spearman=spearman(proxy, target),
        kendall=kendall(proxy, target),
        discordant=discordant_pairs(proxy, target),
        pairs=n * (n - 1) // 2,
        p_spearman=p_rho,
        p_kendall=p_tau,
        exact=exact,
        best_proxy=best_p,
        best_target=best_t,
        worst_proxy=worst_p,
        worst_target=worst_t,
        undefined=undefined_reason("proxy", proxy, metric) or undefined_reason("target", target, metric),
    )


def paired_runs(runs: list[RunRecord], proxy: str, target: str) -> list[tuple[str, RunRecord, RunRecord]]:
    """(setting, proxy run, target run) for every setting finished with both archs; the latest run wins."""
    by_arch: dict[str, dict[str, RunRecord]] = {proxy: {}, target: {}}
    for r in finished(runs):  # oldest first, so a later run of the same setting replaces an earlier one
        if r.arch in by_arch:
            by_arch[r.arch][r.setting] = r
    shared = sorted((s for s in by_arch[proxy] if s in by_arch[target]), key=lambda s: by_arch[proxy][s].order)
    return [(s, by_arch[proxy][s], by_arch[target][s]) for s in shared]


Results = Callable[[RunRecord], dict]  # a run's result.json (per-image values), e.g. read from its MLflow artifact


def correlate_runs(runs: list[RunRecord], proxy: str, target: str, results: Results | None = None) -> list[Agreement]:
    """Agreement for every set both archs were validated on (plus "mean") and every metric with values; with
    `results`, the intervals and the test of a disagreement from the runs' per-image values (`tested`)."""
    pairs = paired_runs(runs, proxy, target)
    if len(pairs) < 3:
        have = ", ".join(s for s, _, _ in pairs) or "none"
        raise UserError(
            f"the correlation check needs at least 3 settings finished with both arch={proxy} and arch={target}; "
            f"shared finished settings: {have}. Run or resume `sweeper run study=correlation` first"
        )
    labels = [s for s, _, _ in pairs]
    sets = sorted(set.intersection(*(set(p.sets()) & set(t.sets()) for _, p, t in pairs))) + ["mean"]
    out = []
    for set_name in sets:
        for metric in METRICS:
            x = np.array([p.value(set_name, metric) for _, p, _ in pairs])
            y = np.array([t.value(set_name, metric) for _, _, t in pairs])
            if not (np.isnan(x).any() or np.isnan(y).any()):
                a = agreement(set_name, metric, labels, x, y)
                out.append(tested(a, pairs, results) if results else a)
    return out


def side_evidence(runs: list[RunRecord], results: Results, set_name: str, metric: str) -> evidence.Evidence | None:
    """One arch's per-image values of `metric` on `set_name` ("mean": every set) as m[setting, 1, image]."""
    got = [results(r) for r in runs]
    if set_name != "mean":
        got = [evidence.only_set(g, set_name) for g in got]
    return evidence.arrange([[g] for g in got], metric, runs[0].params.get("metrics.space", "y"))


def tested(a: Agreement, pairs: list[tuple[str, RunRecord, RunRecord]], results: Results, n: int = 1000) -> Agreement:
    """`a` with bootstrap intervals for rho and tau (images resampled within their sets, the same images on
    both sides; seeded) and, where the bests differ, whether both archs separate the two settings
    (`stats.compare`): only then is the disagreement significant."""
    labels = [s for s, _, _ in pairs]
    found = [side_evidence([cast(RunRecord, pair[k]) for pair in pairs], results, a.set, a.metric) for k in (1, 2)]
    ev = [e for e in found if e is not None]
    if len(ev) < 2 or ev[0].images != ev[1].images or not ev[0].per_image:
        return a
    groups = np.asarray(ev[0].groups)
    weight = stats.image_weights(groups)
    _, v = stats.draws(np.random.default_rng(0), 1, groups, n)
    means = [(v * weight) @ e.m.mean(axis=1).T for e in ev]  # (draws, settings) per side
    rho = [spearman(means[0][b], means[1][b]) for b in range(n)]
    tau = [kendall(means[0][b], means[1][b]) for b in range(n)]

    def ci(xs: list[float]) -> tuple[float, float]:
        low, high = np.nanquantile(xs, [0.025, 0.975])
        return float(low), float(high)

    disagreement = a.disagreement
    if not a.undefined and a.best_proxy != a.best_target:
        pick = [labels.index(a.best_proxy), labels.index(a.best_target)]
        separated = [stats.compare(e.m[pick], HIGHER_IS_BETTER[a.metric], [labels[i] for i in pick], e.groups, a.metric).kind == "winner"
                     for e in ev]  # fmt: skip
        disagreement = "significant" if all(separated) else "not significant"
    return replace(a, rho_ci=ci(rho), tau_ci=ci(tau), disagreement=disagreement)


def gate(results: list[Agreement], select_by: str) -> Agreement:
    """The row promotion is gated on: the selection metric, e.g. `mean/lpips` or `BSD100/lpips`."""
    set_name, _, metric = select_by.rpartition("/")
    set_name = set_name or "mean"
    for a in results:
        if (a.set, a.metric) == (set_name, metric):
            return a
    have = ", ".join(f"{a.set}/{a.metric}" for a in results)
    raise UserError(f"select_by={select_by!r} has no correlation row; choose one of {have}")


def verdict(g: Agreement) -> str:
    """One line: does the proxy pick the target's best setting under the selection metric?"""
    if g.undefined:
        return f"undefined: by {g.set}/{g.metric} {g.undefined}, so agreement on the best setting cannot be judged"
    if g.best_agrees:
        return f"consistent: both archs rank {g.best_proxy} best by {g.set}/{g.metric}"
    bests = f"by {g.set}/{g.metric} the proxy's best is {g.best_proxy} but the target's best is {g.best_target}"
    if g.disagreement == "significant":
        return f"contradicts: {bests} (each arch separates the two by paired 95 % intervals)"
    why = ("the paired intervals do not separate the two on both archs" if g.disagreement == "not significant"
           else "without per-image values the difference cannot be tested")  # fmt: skip
    return f"inconclusive: {bests}, and {why}"


def gate_tag(g: Agreement) -> str:
    """`sweeper.best_agrees`: true, false (a significant contradiction), inconclusive or undefined."""
    if g.undefined:
        return "undefined"
    return "true" if g.best_agrees else "false" if g.disagreement == "significant" else "inconclusive"


def to_rows(results: list[Agreement]) -> list[dict]:
    """Plain dict rows for CSV/Markdown (booleans as yes/no)."""
    rows = []
    for a in results:
        d = asdict(a)
        d["metric"] = LABELS[a.metric]
        d["discordant"] = f"{a.discordant}/{a.pairs}"
        del d["pairs"]
        d["best_agrees"] = (
            "undefined"
            if a.undefined
            else "yes"
            if a.best_agrees
            else "no"
            if a.disagreement == "significant"
            else "inconclusive"
        )
        d["rho_ci"] = "" if a.rho_ci is None else f"[{a.rho_ci[0]:.2f}, {a.rho_ci[1]:.2f}]"
        d["tau_ci"] = "" if a.tau_ci is None else f"[{a.tau_ci[0]:.2f}, {a.tau_ci[1]:.2f}]"
        d["worst_agrees"] = "undefined" if a.undefined else "yes" if a.worst_agrees else "no"
        d["undefined"] = a.undefined or ""
        rows.append(d)
    return rows


def selection_metric(select_by: str | None, runs: list[RunRecord]) -> str:
    """`mean/<metric>`: the option, else the study's stages' `sweeper.select_by` tag, else LPIPS (the paper's)."""
    tagged = [r.tags["sweeper.select_by"] for r in runs if r.tags.get("sweeper.select_by")]
    chosen = select_by or (tagged[-1] if tagged else "lpips")
    return chosen if "/" in chosen else f"mean/{chosen}"


def summary(results: list[Agreement], select_by: str) -> str:
    """The Markdown table, the small-n warning and the verdict, as printed and logged."""
    g = gate(results, select_by)
    return f"{rows_to_markdown(to_rows(results))}\n{weakness_note(g.n)}\n\nVerdict (promotion gate, {select_by}): {verdict(g)}\n"


def log_check(
    client: MlflowClient, study: str, proxy: str, target: str, results: list[Agreement], select_by: str
) -> str:
    """Record the check as a run (tag sweeper.kind=correlation) in the study's experiment; returns its id."""
    g = gate(results, select_by)
    tags = {
        "sweeper.kind": "correlation",
        "sweeper.study": study,
        "sweeper.proxy": proxy,
        "sweeper.target": target,
        "sweeper.select_by": select_by,
        "sweeper.best_agrees": gate_tag(g),
        "sweeper.best_setting": g.best_proxy,
        "sweeper.verdict": verdict(g),
    }
    run_id = client.create_run(
        experiment_ids(client, study)[0], run_name=f"correlate {proxy} vs {target}", tags=tags
    ).info.run_id
    stats = ("spearman", "kendall", "discordant", "p_spearman", "p_kendall")
    values = [(f"{a.set}/{a.metric}/{name}", float(getattr(a, name))) for a in results for name in stats]
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, v, now, 0) for key, v in values if not math.isnan(v)])
    client.log_text(run_id, summary(results, select_by), "correlation.md")
    client.log_text(run_id, rows_to_csv(to_rows(results)), "correlation.csv")
    client.set_terminated(run_id)
    return run_id


def _pop_arch(tokens: list[str], key: str, default: str) -> tuple[str, list[str]]:
    """Take `proxy=`/`target=` out of the tokens (they are not training settings) and check the value."""
    values = [t.partition("=")[2] for t in tokens if t.startswith(f"{key}=")]
    value = values[-1].strip() if values else default
    check_choice(key, value, ARCHS)
    return value, [t for t in tokens if not t.startswith(f"{key}=")]


def main(tokens: list[str]) -> None:
    """`sweeper correlate [study=correlation] [proxy=srgan target=esrgan] [select_by=lpips]`."""
    proxy, tokens = _pop_arch(tokens, "proxy", "srgan")
    target, tokens = _pop_arch(tokens, "target", "esrgan")
    if proxy == target:
        raise UserError(f"proxy={proxy} and target={target} are the same arch; choose two of {', '.join(ARCHS)}")
    opts = parse(tokens, allow_config=False)
    study = opts.study or "correlation"
    client = open_client(opts)
    try:
        runs = find_runs(client, "trial", study)
    except UserError:  # no experiment of that name: nothing of the study has run in this store
        raise UserError(
            f"no runs of study {study} in this tracking store: `sweeper run study={study}` trains arch={proxy} and "
            f"arch={target} on the same settings, then `sweeper correlate` compares them"
        ) from None
    results = correlate_runs(runs, proxy, target, lambda r: read_artifact(client, r.run_id, "result.json"))
    select_by = selection_metric(opts.select_by, find_runs(client, "stage", study))
    print(summary(results, select_by))
    run_id = log_check(client, study, proxy, target, results, select_by)
    print(f"logged as MLflow run {run_id} (experiment {study}, tag sweeper.kind=correlation)")
