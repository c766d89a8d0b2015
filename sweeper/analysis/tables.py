"""A results table as in the paper (rows = settings or methods, columns = sets x metrics) and its three
renderings: Markdown, CSV and LaTeX.

Marks: only a difference the data can support is marked (issue 18). `Table.significance` holds, per cell,
`best` (the best row of its column, separated from every other row by the paired comparison of
`sweeper.analysis.stats`) or `tie` (not separable from the best): Markdown `**best**` and `value ≈`, LaTeX
`\\textbf{best}` and `value$\\approx$`. A column without per-image values to compare carries no mark; the note
under the table says which intervals were used. The paper's own markers (best / second best in red and blue,
Table 4's best and worst) rank values without any interval and are not reproduced. Columns follow each paper
table's order: SSIM / PSNR / LPIPS in Tables 1, 2 and 6, PSNR / SSIM / LPIPS in Tables 4 and 5. CSV holds plain numbers.
Every rendering carries the provenance line (preset, data, metric space, weights, LPIPS network, commit): in
Markdown under the title, in CSV as the last column, in LaTeX inside the caption, so that no copy of a
table reads as a paper result without saying what it is.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from itertools import groupby

from sweeper.analysis.runs import LABELS

DECIMALS = {"psnr": 2, "ssim": 4, "lpips": 4}
LEGEND = ("**bold** = best in its column and separated from every other row; ≈ = not separable from the best "
          "(a tie); unmarked columns: nothing to compare beyond the means.")  # fmt: skip
LEGEND_LATEX = (
    r"\textbf{Bold}: best in its column and separated from every other row; $\approx$: not separable "
    r"from the best."
)  # the same, in the LaTeX caption


@dataclass
class Table:
    """`values[i][j]` is row i's value for `columns[j] = (group, metric)`; NaN = not measured."""

    key: str  # file stem, e.g. "table1_mu_srgan"
    kind: str  # what the rows compare: mu | beta | ablation | correlation | archs | baselines
    title: str
    header: str  # provenance line: preset, data, weights kind, commit
    rows: list[str]
    columns: list[tuple[str, str]]
    values: list[list[float]]
    notes: list[str] = field(default_factory=list)
    unranked: set[int] = field(default_factory=set)  # rows shown but never marked (trials stopped by halving)
    significance: list[list[str]] | None = None  # per cell: "best" | "tie" | "" (sweeper.analysis.stats)
    spread: list[list[float]] | None = None  # per cell: the +- shown after the value (NaN: none)
    spread_kind: str = ""  # what the +- is, e.g. "std over 3 repeats"

    def column(self, j: int) -> list[float]:
        return [row[j] for row in self.values]

    def markers(self) -> list[list[str]]:
        """'best' / 'tie' / '' for each cell: what the comparison supports (nothing without one)."""
        if self.significance is None:
            return [["" for _ in self.columns] for _ in self.rows]
        return [["" if i in self.unranked else m for m in row] for i, row in enumerate(self.significance)]


def fmt(value: float, metric: str, spread: float = math.nan) -> str:
    """The value at the metric's precision, `+- spread` after it when there is one."""
    if math.isnan(value):
        return "n/a"
    text = f"{value:.{DECIMALS[metric]}f}"
    return text if math.isnan(spread) else f"{text} ± {spread:.{DECIMALS[metric]}f}"


def _groups(table: Table) -> list[tuple[str, list[int]]]:
    """Consecutive columns sharing a group (a set, or an arch in Table 4): (group, column indices)."""
    return [(g, [j for j, _ in items]) for g, items in groupby(enumerate(table.columns), key=lambda jc: jc[1][0])]


def _cells(table: Table, wrap: dict[str, str], sep: str) -> list[list[str]]:
    """Row cells with each group's metrics joined by `sep` and markers applied through `wrap` templates."""
    marks = table.markers()
    rows = []
    for i, label in enumerate(table.rows):
        cells = [label]
        for _, cols in _groups(table):
            parts = []
            for j in cols:
                text = fmt(table.values[i][j], table.columns[j][1], table.spread[i][j] if table.spread else math.nan)
                parts.append(wrap.get(marks[i][j], "{}").format(text))
            cells.append(sep.join(parts))
        rows.append(cells)
    return rows


def _subheads(table: Table, sep: str) -> list[str]:
    return [sep.join(LABELS[table.columns[j][1]] for j in cols) for _, cols in _groups(table)]


def to_markdown(table: Table) -> str:
    groups = [g for g, _ in _groups(table)]
    lines = [f"### {table.title}", "", f"_{table.header}_", ""]
    lines.append("| | " + " | ".join(groups) + " |")
    lines.append("|---" * (len(groups) + 1) + "|")
    lines.append("| | " + " | ".join(_subheads(table, " / ")) + " |")
    for cells in _cells(table, {"best": "**{}**", "tie": "{} ≈"}, " / "):
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", LEGEND] + [f"{n}" for n in table.notes]
    return "\n".join(lines) + "\n"


def to_columns(table: Table) -> dict[str, list]:
    """The table as named columns (`setting`, then `<set>/<metric>`; None = not measured), for `MlflowClient.log_table`."""
    out: dict[str, list] = {"setting": list(table.rows)}
    for j, (group, metric) in enumerate(table.columns):
        out[f"{group}/{metric}"] = [None if math.isnan(v) else round(v, 6) for v in table.column(j)]
    return out


def to_csv(table: Table) -> str:
    """Plain numbers; with repeats, a `<set>/<metric> sd` column (the std over repeats, `spread_kind`) after
    each value column. Marks are in the Markdown and LaTeX."""

    def number(v: float) -> str:
        return "" if math.isnan(v) else repr(round(v, 6))

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    spread = table.spread
    header = [f"{g}/{m}" for g, m in table.columns]
    w.writerow(["row"] + ([c for h in header for c in (h, f"{h} sd")] if spread else header) + ["provenance"])
    for i, (label, values) in enumerate(zip(table.rows, table.values)):
        cells = [number(v) for v in values]
        if spread:
            cells = [c for v, sd in zip(values, spread[i]) for c in (number(v), number(sd))]
        w.writerow([label] + cells + [table.header])
    return buf.getvalue()


def latex_escape(text: str) -> str:
    """Escape TeX specials; `mu=0.5` and `beta3_6` become $\\mu=0.5$ and $\\beta_{3,6}$ as in the paper."""
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"), ("$", r"\$"), ("_", r"\_")):
        text = text.replace(a, b)
    text = re.sub(r"beta(\d)\\_(\d)", r"$\\beta_{\1,\2}$", text)
    text = re.sub(r"\bmu=inf\b", r"$\\mu=\\infty$", text)
    text = re.sub(r"\bmu=([0-9.e+-]+)", r"$\\mu=\1$", text)
    return text


def to_latex(table: Table) -> str:
    groups = _groups(table)
    wrap = {"best": r"\textbf{{{}}}", "tie": r"{}$\approx$"}
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(table.title)}. {LEGEND_LATEX} {{\footnotesize {latex_escape(table.header)}}}}}",
        r"\begin{tabular}{l" + "c" * len(groups) + "}",
        r"\hline",
        " & " + " & ".join(latex_escape(g) for g, _ in groups) + r" \\",
        " & " + " & ".join(_subheads(table, " / ")) + r" \\",
        r"\hline",
    ]
    for cells in _cells(table, wrap, " / "):
        lines.append(" & ".join([latex_escape(cells[0])] + cells[1:]) + r" \\")
    lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def rows_to_markdown(rows: list[dict]) -> str:
    """A plain Markdown table of dict rows (keys of the first row as the header)."""
    keys = list(rows[0])
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else "-" if v is None else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|---" * len(keys) + "|"]
    lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def rows_to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def rows_to_latex(rows: list[dict], caption: str) -> str:
    """A plain LaTeX table of dict rows (keys of the first row as the header)."""
    keys = list(rows[0])
    cell = lambda v: latex_escape(f"{v:.4g}" if isinstance(v, float) else "--" if v is None else str(v))  # noqa: E731
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(caption)}}}", r"\begin{tabular}{" + "l" * len(keys) + "}",
             r"\hline", " & ".join(latex_escape(k) for k in keys) + r" \\", r"\hline"]  # fmt: skip
    lines += [" & ".join(cell(r[k]) for k in keys) + r" \\" for r in rows]
    lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
