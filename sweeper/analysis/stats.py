"""Which differences between grid points are real: paired comparisons with the best point, their intervals,
tests and the stage's verdict (winner or tie). Pure numpy/scipy; owns no store.

The data of one stage and one metric is `m[p, r, i]`: point `p`, repeat (seed) `r`, test image `i`. Repeat `r`
of every point used the same seed (common random numbers), and every point was scored on the same images, so
`d[q, r, i] = s[q, r, i] - s[best, r, i]` (`s` the metric oriented so that smaller is better) is paired on
both axes: seed luck and hard images cancel out of it.

- Point estimate: the weighted mean of `d` over repeats and images. Images are weighted so that every
  *validation set* counts equally (each set's mean, then the mean over sets): the product's `mean/<metric>`
  and the paper's tables both average set means, and a rule applied to the paper's tables (`paper-check`)
  must be the rule applied to ours. Within a set every image counts equally.
- Interval (`interval="t"`, the default): diff +- t * sqrt(V), V = a seed part + an image part. The image
  part is a seeded stratified bootstrap of the per-image differences averaged over repeats (images resampled
  within each set; the same drawn indices for every point, which keeps the pairing); the seed part is the
  spread of the per-repeat mean differences over R, with the repeat x image residual (which both parts would
  count) taken out of it. t has R - 1 degrees of freedom (conservative: Welch-Satterthwaite, pooling the two
  parts' degrees of freedom estimated from 2-3 repeats, covered 91 % for a nominal 95 % at R=3). With one
  repeat t has the images' degrees of freedom and the interval is "over images, one seed": seed noise was
  not measured.
  Why not the sketch in shared/notes/statistics.md, a pure bootstrap over repeats and images
  (`interval="bootstrap"`: repeats and images resampled independently, Owen's "pigeonhole" bootstrap for a
  crossed design, percentile interval)? With 2-5 repeats a resample of R seeds has a handful of distinct
  values and no t-like tails, and its intervals are too narrow: with no real difference it separated the
  points about three times as often as the nominal 5 % at R=3 (tests/test_stats.py measures both).
- Several comparisons at once: `simultaneous=True` (the default, used for the verdict) makes every interval
  Bonferroni over all P(P-1)/2 pairs of points. Bonferroni over only the P - 1 comparisons with the best is
  not enough, because the best is picked from the same data (with 5 equal points, some point was declared
  behind the best far more often than alpha). `simultaneous=False` gives per-comparison intervals.
- Paired test beside the interval: with enough repeats for a sign-flip test to reach alpha (2/2^R <= alpha,
  R >= 6), the exact sign-flip permutation test of the per-repeat mean differences (`scipy.stats.
  permutation_test`, all 2^R patterns for R <= 10); with fewer, the Wilcoxon signed-rank test over images of
  the per-image differences averaged over repeats (`scipy.stats.wilcoxon`; zeros and tied ranks handled by
  its "zsplit" and normal approximation). p-values are Holm-adjusted within the family of all pairs
  (written here: scipy has no Holm, and statsmodels is not a dependency for eight lines).
- Verdict: point `q` is *separated* from the best when its interval's lower end exceeds `min_effect`
  (default 0: any consistent difference counts). `winner` when every other point is separated; otherwise a
  `tie` among the best and the points not separated from it. `untested` when nothing varies that could
  give an interval (one repeat and one value per set): none is claimed.
- Resolution, an estimate: the smallest difference the current design resolves is `min_effect` + the
  median interval half-width; the repeats that would resolve an observed difference `delta` are the fewest R'
  whose half-width t(R'-1) * sqrt(image part + seed part * R / R') is below `delta - min_effect`, assuming
  the variances stay as measured; none when even 1000 would not do (the image part alone is too wide: more
  images, not more seeds, would help); unknown with one repeat (no seed variance was measured).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

from sweeper.core.selection import TIE_BREAKS

DRAWS = 4000  # bootstrap draws (the image part; the pure bootstrap's Bonferroni tails need many)
EXACT_SIGN_FLIPS = 10  # sign-flip tests are exact (every pattern) up to 2^10 patterns


@dataclass(frozen=True)
class Settings:
    """How a comparison is computed. `min_effect` is in the metric's units (0.01 dB PSNR, 0.001 LPIPS)."""

    alpha: float = 0.05
    min_effect: float = 0.0
    simultaneous: bool = True
    draws: int = DRAWS
    seed: int = 0
    interval: str = "t"  # t | bootstrap (see the module docstring: the pure bootstrap is too narrow for few repeats)


@dataclass(frozen=True)
class Row:
    """One point against the best: `diff` = how much worse than the best it is on average (metric units,
    >= 0 unless it is the best), its interval [`low`, `high`] and paired p-value (Holm-adjusted)."""

    label: str
    mean: float
    diff: float
    low: float
    high: float
    p: float
    separated: bool  # the interval puts it behind the best by more than min_effect
    repeats_needed: int | None  # estimate; None: unknown (one repeat) or not reachable by repeats alone
    best: bool = False

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


@dataclass(frozen=True)
class Comparison:
    """Every point of a stage compared with the best by one metric."""

    metric: str
    higher_is_better: bool
    rows: list[Row]  # in the order of the points given
    kind: str  # winner | tie | untested
    repeats: int
    images: int  # per repeat, over all sets
    sets: int
    settings: Settings
    test: str  # the paired test used
    resolvable: float | None  # smallest difference the current design resolves (estimate)

    @property
    def best(self) -> Row:
        return next(r for r in self.rows if r.best)

    @property
    def tied(self) -> list[Row]:
        """The best and every point not separated from it (just the best for a winner)."""
        return [r for r in self.rows if r.best or not r.separated]

    @property
    def interval(self) -> str:
        """What the intervals are, in words, for table notes and logs."""
        level = f"{1 - self.settings.alpha:.0%}"
        k = pairs(len(self.rows))
        which = (
            f"simultaneous over all {k} pairs (Bonferroni)"
            if self.settings.simultaneous and k > 1
            else "per comparison"
        )
        over = "over images, one seed" if self.repeats == 1 else f"over {self.repeats} repeats and images"
        if self.kind == "untested":
            return "no interval: one seed and one value per set"
        how = ("paired pigeonhole bootstrap" if self.settings.interval == "bootstrap"
               else "paired t (seed spread) + image bootstrap")  # fmt: skip
        return f"{level} {which}, {how} {over} ({self.settings.draws} draws, seed {self.settings.seed})"


def oriented(m: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """`m` as a loss: negated where higher is better."""
    return -m if higher_is_better else m


def image_weights(groups: np.ndarray) -> np.ndarray:
    """Each image's weight in the overall mean: 1 / (number of sets x images in its set)."""
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[inverse])


def weighted_means(m: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per point: the mean over repeats of the mean over sets of each set's image mean."""
    return np.einsum("pri,i->p", m, image_weights(groups)) / m.shape[1]


def draws(rng: np.random.Generator, repeats: int, groups: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap multiplicities: (n, repeats) counts of each repeat drawn, (n, images) counts of each image
    drawn within its set."""
    w = rng.multinomial(repeats, np.full(repeats, 1 / repeats), size=n).astype(float)
    v = np.zeros((n, groups.size))
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        v[:, idx] = rng.multinomial(idx.size, np.full(idx.size, 1 / idx.size), size=n)
    return w, v


def resampled_means(d: np.ndarray, w: np.ndarray, v: np.ndarray, image_weight: np.ndarray) -> np.ndarray:
    """Weighted means of d[p, r, i] under repeat multiplicities w[b, r] and image multiplicities v[b, i]:
    (b, p)."""
    return np.einsum("br,pri,bi->bp", w / d.shape[1], d, v * image_weight, optimize=True)


@dataclass(frozen=True)
class VarianceParts:
    """The variance of each point's mean difference to the best, split into a seed part (shrinks as 1/R) and
    an image part (fixed by the test images), with their degrees of freedom."""

    seed_unit: np.ndarray  # (points,): variance of one repeat's difference, residual noise removed
    image: np.ndarray  # (points,): variance from sampling images (stratified bootstrap of the repeat means)
    image_df: int

    def total(self, repeats: int) -> np.ndarray:
        return self.seed_unit / repeats + self.image

    def df(self, repeats: int) -> float:
        """Degrees of freedom: the seed part's (R - 1) with repeats, the image part's with one. Welch-
        Satterthwaite would pool them, but with its degrees of freedom estimated from two or three repeats it
        under-covers (91 % for a nominal 95 % at R=3 in a simulation of the test model): R - 1 is conservative."""
        return float(repeats - 1 if repeats > 1 else self.image_df)

    def half_width(self, tail: float, repeats: int) -> np.ndarray:
        return sps.t.ppf(1 - tail, self.df(repeats)) * np.sqrt(self.total(repeats))

    def repeats_needed(self, q: int, margin: float, tail: float, most: int = 1000) -> int | None:
        """The fewest repeats whose interval half-width for point q would be below `margin` (the observed
        difference less min_effect); None when even `most` repeats would not do (images limit it)."""
        if margin <= 0:
            return None
        r = np.arange(2, most + 1)
        half = sps.t.ppf(1 - tail, r - 1) * np.sqrt(self.seed_unit[q] / r + self.image[q])
        ok = np.flatnonzero(half < margin)
        return int(r[ok[0]]) if ok.size else None


def _variance_parts(d: np.ndarray, groups: np.ndarray, v: np.ndarray) -> VarianceParts:
    """Seed and image variance of the weighted mean of d[p, r, i] (a crossed repeat x image design).

    The spread of the per-repeat means x_r estimates seed variance plus residual/images; the image bootstrap
    of the per-image repeat means estimates image variance plus residual/repeats. The residual (repeat x image
    interaction, from the two-way decomposition) would be counted twice, so it is taken out of the seed part."""
    n_points, n_repeats, n_images = d.shape
    weight = image_weights(groups)
    x = np.einsum("pri,i->pr", d, weight)
    per_image = d.mean(axis=1)
    image = ((v * weight) @ per_image.T).var(axis=0)
    if n_repeats > 1:
        resid = d - per_image[:, None, :] - x[:, :, None] + (per_image @ weight)[:, None, None]
        sigma2 = (resid**2).sum(axis=(1, 2)) / ((n_repeats - 1) * max(n_images - 1, 1))
        seed_unit = np.maximum(x.var(axis=1, ddof=1) - sigma2 * (weight**2).sum(), 0.0)
    else:
        seed_unit = np.zeros(n_points)
    return VarianceParts(seed_unit, image, max(n_images - np.unique(groups).size, 1))


def pairs(n_points: int) -> int:
    """The number of pairwise comparisons among n points: the simultaneous intervals' family."""
    return n_points * (n_points - 1) // 2


def holm(p: Sequence[float], family: int | None = None) -> list[float]:
    """Holm's step-down adjustment of p-values (controls the family-wise error rate) within a family of
    `family` >= len(p) hypotheses (the untested ones counted as the largest p-values)."""
    values = np.asarray(p, dtype=float)
    family = values.size if family is None else family
    order = np.argsort(values)
    adjusted = np.empty_like(values)
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (family - k) * values[i]))
        adjusted[i] = running
    return adjusted.tolist()


def sign_flip_p(x: np.ndarray) -> float:
    """Two-sided p of the exact (R <= 10) sign-flip permutation test that per-repeat differences x centre on 0."""
    if not np.any(x):
        return 1.0
    res = sps.permutation_test((x,), np.mean, permutation_type="samples", n_resamples=2**EXACT_SIGN_FLIPS,
                               alternative="two-sided", random_state=0)  # fmt: skip
    return float(res.pvalue)


def wilcoxon_p(x: np.ndarray) -> float:
    """Two-sided p of the Wilcoxon signed-rank test that per-image differences x centre on 0 (1 when all are 0)."""
    if not np.any(x):
        return 1.0
    return float(sps.wilcoxon(x, zero_method="zsplit").pvalue)


def paired_test(repeats: int, alpha: float) -> str:
    """The paired test `compare` uses for `repeats` seeds."""
    return (
        "sign-flip permutation over repeats (exact)"
        if 2 / 2**repeats <= alpha
        else "Wilcoxon signed-rank over images (repeat means)"
    )


def compare(m: np.ndarray, higher_is_better: bool, labels: Sequence[str], groups: Sequence | None = None,
            metric: str = "", settings: Settings = Settings()) -> Comparison:  # fmt: skip
    """Compare every point of `m[p, r, i]` with the best by mean; `groups[i]` names image i's set (None: one
    set). NaN values are not allowed (a point without the metric cannot be compared)."""
    m = np.asarray(m, dtype=float)
    if m.ndim != 3 or m.shape[0] != len(labels) or 0 in m.shape:
        raise ValueError(f"expected m[point, repeat, image] with {len(labels)} points, got shape {m.shape}")
    if np.isnan(m).any():
        raise ValueError("m has NaN values: every point needs the metric on every image and repeat")
    sets = np.zeros(m.shape[2], dtype=int) if groups is None else np.asarray(groups)
    n_points, n_repeats, _ = m.shape
    weight = image_weights(sets)
    s = oriented(m, higher_is_better)
    means = weighted_means(s, sets)
    best = int(np.argmin(means))  # first of equal means: the caller's order decides exact ties
    d = s - s[best]
    diff = means - means[best]

    k = max(pairs(n_points), 1) if settings.simultaneous else 1
    tail = settings.alpha / (2 * k)
    untested = n_repeats == 1 and all(np.sum(sets == g) == 1 for g in np.unique(sets))
    rng = np.random.default_rng(settings.seed)
    w, v = draws(rng, n_repeats, sets, settings.draws)
    parts = _variance_parts(d, sets, v)
    if settings.interval == "bootstrap":
        low, high = np.quantile(resampled_means(d, w, v, weight), [tail, 1 - tail], axis=0)
    else:
        half = parts.half_width(tail, n_repeats)
        low, high = diff - half, diff + half

    test = paired_test(n_repeats, settings.alpha)
    raw = []
    for q in range(n_points):
        if test.startswith("sign-flip"):
            raw.append(sign_flip_p(np.einsum("ri,i->r", d[q], weight)))
        else:
            raw.append(wilcoxon_p(d[q].mean(axis=0)))
    others = [q for q in range(n_points) if q != best]
    adjusted = dict(zip(others, holm([raw[q] for q in others], k if settings.simultaneous else None))) if others else {}

    rows = []
    for q in range(n_points):
        separated = q != best and not untested and low[q] > settings.min_effect
        needed = parts.repeats_needed(q, diff[q] - settings.min_effect, tail) if q != best and n_repeats > 1 else None
        sign = -1 if higher_is_better else 1
        rows.append(Row(label=str(labels[q]), mean=float(sign * means[q]), diff=float(diff[q]), low=float(low[q]),
                        high=float(high[q]), p=float(adjusted.get(q, 1.0)), separated=bool(separated),
                        repeats_needed=needed, best=q == best))  # fmt: skip
    kind = "untested" if untested else "winner" if all(r.separated for r in rows if not r.best) else "tie"
    halves = [r.half_width for r in rows if not r.best]
    resolvable = None if untested or not halves else settings.min_effect + float(np.median(halves))
    return Comparison(metric=metric, higher_is_better=higher_is_better, rows=rows, kind=kind, repeats=n_repeats,
                      images=m.shape[2], sets=int(np.unique(sets).size), settings=settings, test=test,
                      resolvable=resolvable)  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    """The stage's choice: `chosen` and how it was reached. `kind` is `winner` (separated from every other
    point, by the first metric or, among its tie, by a later one), `tie` (`tied` could not be told apart;
    `tie_break` chose) or `untested` (no interval could be computed; chosen by mean)."""

    kind: str
    chosen: str
    tied: list[str]
    tie_break: str | None
    comparisons: list[Comparison] = field(default_factory=list)  # one per metric consulted, in order

    def summary(self) -> str:
        """One line for the CLI, `sweeper status` and tags."""
        first = self.comparisons[0]
        if self.kind == "winner":
            how = (
                f"by {first.metric}"
                if len(self.comparisons) == 1
                else (f"tied by {first.metric}, separated by {self.comparisons[-1].metric}")
            )
            return f"winner {self.chosen} ({how}; {first.interval})"
        if self.kind == "untested":
            return f"UNTESTED: {self.chosen} by mean {first.metric} only ({first.interval})"
        return (f"TIE among {', '.join(self.tied)} (by {', '.join(c.metric for c in self.comparisons)}; {first.interval}); "
                f"{self.chosen} taken by tie_break={self.tie_break}")  # fmt: skip


def decide(metrics: Sequence[tuple[str, np.ndarray, bool]], labels: Sequence[str], groups: Sequence | None = None,
           settings: Settings = Settings(), tie_break: str = "best_mean",
           simplicity: Sequence[int] | None = None) -> Verdict:  # fmt: skip
    """Choose among the points by `metrics` in order ((name, m[p, r, i], higher_is_better), the first one
    deciding, each later one consulted only among the points the previous ones left tied). `min_effect`
    applies to the first metric; the others use 0. A tie left at the end is broken by `tie_break`:
    `best_mean` (best mean of the first metric, then the next), or `simplest` (lowest `simplicity[p]`,
    the caller's order of how far a setting departs from the plain reference loss)."""
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break={tie_break!r}; expected one of {', '.join(TIE_BREAKS)}")
    pool = list(range(len(labels)))
    done: list[Comparison] = []
    for n, (name, m, higher) in enumerate(metrics):
        local = (
            settings if n == 0 else Settings(settings.alpha, 0.0, settings.simultaneous, settings.draws, settings.seed)
        )
        c = compare(np.asarray(m)[pool], higher, [labels[p] for p in pool], groups, name, local)
        done.append(c)
        if c.kind == "untested":
            return Verdict("untested", c.best.label, [c.best.label], None, done)
        pool = [p for p, r in zip(pool, c.rows) if r.best or not r.separated]
        if len(pool) == 1:
            return Verdict("winner", labels[pool[0]], [labels[pool[0]]], None, done)
    if tie_break == "simplest":
        order = list(simplicity) if simplicity is not None else list(range(len(labels)))
        chosen = min(pool, key=lambda p: (order[p], p))
    else:
        grouped = np.zeros(np.asarray(metrics[0][1]).shape[2], dtype=int) if groups is None else np.asarray(groups)
        means = np.array([weighted_means(oriented(np.asarray(m, dtype=float), h), grouped) for _, m, h in metrics])
        chosen = min(pool, key=lambda p: (*means[:, p], p))
    return Verdict("tie", labels[chosen], [labels[p] for p in pool], tie_break, done)


def comparison_rows(verdict: Verdict) -> list[dict[str, object]]:
    """The verdict's comparisons as flat rows (one per metric and point) for an MLflow table, CSV or Markdown."""
    rows: list[dict[str, object]] = []
    for c in verdict.comparisons:
        for r in c.rows:
            rows.append({"metric": c.metric, "point": r.label, "mean": r.mean, "behind_best": r.diff, "low": r.low,
                         "high": r.high, "p_holm": r.p, "separated": r.separated, "best": r.best,
                         "repeats_needed": r.repeats_needed, "repeats": c.repeats, "images": c.images,
                         "interval": c.interval, "test": c.test, "verdict": verdict.kind})  # fmt: skip
    return rows


def standings(verdict: Verdict) -> dict[str, tuple[str, dict[str, float]]]:
    """Per point: where the verdict leaves it (`best`: the winner; `tied`: in the final tie, the chosen one
    included; `behind`: separated; `untested`) and, for each metric it was compared by, how far behind that
    comparison's best it is and the half-width of that difference's interval (`point/behind_best/<metric>`,
    `point/half_width/<metric>`): what each point's MLflow runs show."""
    numbers: dict[str, dict[str, float]] = {}
    for c in verdict.comparisons:
        for r in c.rows:
            numbers.setdefault(r.label, {})
            if c.kind != "untested":
                numbers[r.label] |= {
                    f"point/behind_best/{c.metric}": r.diff,
                    f"point/half_width/{c.metric}": r.half_width,
                }

    def where(label: str) -> str:
        if verdict.kind == "untested":
            return "untested"
        if label not in verdict.tied:
            return "behind"
        return "best" if verdict.kind == "winner" else "tied"

    return {label: (where(label), n) for label, n in numbers.items()}
