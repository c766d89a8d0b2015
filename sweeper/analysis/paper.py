"""The paper's published Tables 1-6 as data (`paper_tables.yaml`, beside this module) and `sweeper paper-check`:
the product's selection rule applied to the paper's own search tables (1: mu, 2: beta).

The rule is the one a stage concludes with (`sweeper.analysis.stats.decide`): the mean over the validation
sets (every set weighing the same) of the first `select_by` metric, later metrics among exact ties. The
paper publishes one training per setting and set means only, so no interval exists: the check says what the
rule picks, how wide the margins are, and which setting wins each set, and calls the choice untested.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from sweeper.analysis import stats
from sweeper.core.overrides import parse
from sweeper.core.selection import HIGHER_IS_BETTER

TABLES_FILE = Path(__file__).with_name("paper_tables.yaml")
UNITS = {"psnr": " dB", "ssim": "", "lpips": ""}


@dataclass(frozen=True)
class PaperRow:
    label: str
    settings: dict[str, str]  # mu/beta/arch/perceptual (or method) as strings: "inf", "0.5", "beta3_6"
    values: dict[str, dict[str, float]]  # set -> metric -> value


@dataclass(frozen=True)
class PaperTable:
    key: str  # table1 ... table6
    title: str
    metrics: list[str]
    rows: list[PaperRow]
    stage: str | None = None  # the search stage the table decides (Tables 1 and 2)
    chosen: str | None = None  # the paper's choice

    @property
    def sets(self) -> list[str]:
        return list(self.rows[0].values)

    def match(self, settings: dict[str, str]) -> PaperRow | None:
        """The row whose every setting equals `settings`' value for it (numbers compared as numbers)."""

        def same(a: str, b: str | None) -> bool:
            try:
                return b is not None and float(a) == float(b)
            except ValueError:
                return a == b

        return next((r for r in self.rows if all(same(v, settings.get(k)) for k, v in r.settings.items())), None)


@dataclass(frozen=True)
class Paper:
    source: str
    space: str  # where PSNR/SSIM were measured: "rgb"
    crop_border: int
    tables: dict[str, PaperTable]


def _text(value: object) -> str:
    return "inf" if isinstance(value, float) and math.isinf(value) else str(value)


def load(path: Path = TABLES_FILE) -> Paper:
    """The shipped tables (yaml.safe_load)."""
    data = yaml.safe_load(path.read_text())
    tables = {}
    for key, t in data["tables"].items():
        rows = [PaperRow(r["label"], {k: _text(v) for k, v in r["settings"].items()},
                         {s: dict(zip(t["metrics"], map(float, vs))) for s, vs in r["values"].items()})
                for r in t["rows"]]  # fmt: skip
        tables[key] = PaperTable(key, t["title"], list(t["metrics"]), rows, t.get("stage"), t.get("chosen"))
    return Paper(data["source"], data["space"], int(data["crop_border"]), tables)


@dataclass(frozen=True)
class Check:
    """The rule applied to one of the paper's search tables."""

    table: PaperTable
    metrics: list[str]
    verdict: stats.Verdict
    means: dict[str, float]  # row label -> mean over sets of the first metric
    per_set: dict[str, str]  # set -> the row best on it by the first metric

    @property
    def ranking(self) -> list[str]:
        sign = -1 if HIGHER_IS_BETTER[self.metrics[0]] else 1
        return sorted(self.means, key=lambda label: sign * self.means[label])

    @property
    def agrees(self) -> bool:
        return self.verdict.chosen == self.table.chosen


def check_table(table: PaperTable, metrics: Sequence[str], tie_break: str = "best_mean") -> Check:
    """Apply the selection rule (`metrics` in order) to a table: m[row, one repeat, set]."""
    labels = [r.label for r in table.rows]
    m = {k: np.array([[[r.values[s][k] for s in table.sets]] for r in table.rows]) for k in metrics}
    verdict = stats.decide([(k, m[k], HIGHER_IS_BETTER[k]) for k in metrics], labels, table.sets, tie_break=tie_break)
    first = metrics[0]
    means = dict(zip(labels, m[first][:, 0, :].mean(axis=1).tolist()))
    sign = -1 if HIGHER_IS_BETTER[first] else 1
    per_set = {s: min(table.rows, key=lambda r: sign * r.values[s][first]).label for s in table.sets}
    return Check(table, list(metrics), verdict, means, per_set)


def check(metrics: Sequence[str], tie_break: str = "best_mean", paper: Paper | None = None) -> list[Check]:
    """The rule applied to every table of the paper that decides a search stage (Tables 1 and 2)."""
    paper = paper or load()
    missing = [k for k in metrics if not all(k in t.metrics for t in paper.tables.values() if t.stage)]
    if missing:
        raise ValueError(f"the paper's search tables have no {', '.join(missing)}")
    return [check_table(t, metrics, tie_break) for t in paper.tables.values() if t.stage]


def render(checks: list[Check], paper: Paper) -> str:
    """The check as text: the ranking with margins, the choice against the paper's, the per-set winners."""
    space = paper.space.upper()
    lines = [
        f"The selection rule applied to the paper's own tables ({paper.source}; PSNR/SSIM on {space}, as published):"
    ]
    for c in checks:
        first = c.metrics[0]
        unit = UNITS[first]
        rule = f"mean {first} over {', '.join(c.table.sets)} (each set weighs the same)"
        if len(c.metrics) > 1:
            rule += f", then {', '.join(c.metrics[1:])}"
        lines += ["", f"{c.table.title}, by {rule}:"]
        ranking = c.ranking
        best = c.means[ranking[0]]
        for n, label in enumerate(ranking, 1):
            gap = "" if n == 1 else f"  (+{abs(c.means[label] - best):.5f}{unit} behind)"
            lines.append(f"  {n}. {label:<10} {c.means[label]:.5f}{gap}")
        chosen, runner = c.verdict.chosen, ranking[1]
        margin = abs(c.means[runner] - c.means[chosen])
        relation = "agrees with" if c.agrees else "differs from"
        theirs = c.table.chosen
        behind = (
            ""
            if c.agrees or theirs is None
            else f" ({c.means[theirs]:.5f}, {abs(c.means[theirs] - c.means[chosen]):.5f}{unit} behind)"
        )
        lines.append(f"  rule picks {chosen}; {relation} the paper's {theirs}{behind}")
        lines.append(
            f"  margin to the runner-up {runner}: {margin:.5f}{unit} ({margin / abs(c.means[chosen]):.1%} of the mean)"
        )
        winners = len(set(c.per_set.values()))
        lines.append("  best per set: " + ", ".join(f"{s} {label}" for s, label in c.per_set.items())
                     + (" (the same on every set)" if winners == 1 else f" ({winners} different settings)"))  # fmt: skip
        lines.append(f"  {c.verdict.kind}: one training per setting and set means only; nothing in the paper "
                     "tells these margins from seed noise")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(tokens: list[str]) -> None:
    """`sweeper paper-check [select_by=lpips,psnr] [select.tie_break=...]` (default: the paper's LPIPS)."""
    opts = parse(tokens, allow_config=False)
    rule = opts.rule(opts.select_by or "lpips")
    published = load()
    print(render(check(rule.metrics, rule.tie_break, published), published), end="")
