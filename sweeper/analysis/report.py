"""`sweeper report study=NAME --out results/NAME`: the paper's tables and figures that a study covers,
regenerated from MLflow alone (docs/ARCHITECTURE.md, "MLflow layout").

Which tables a study covers follows from what varies among its finished trials, stage by stage:
mu -> Table 1, beta -> Table 2, the loss (`perceptual`) -> Table 6, the arch -> Tables 3 and 4.
Table 5 compares the study's winner (and any run promoted from it) with bicubic and with the runs
tagged `sweeper.baseline=true`. From the workspace's Optuna record and trial folders (where the report
can reach them) come the cost table (spent vs the naive protocol, `sweeper.ledger`) and the rank check of
successive halving on stages that trained every trial to the end (`sweeper.rankcheck`). Each table goes out as Markdown, CSV and LaTeX under `<out>/tables/`,
figures as PNG under `<out>/figures/`, everything gathered in `<out>/README.md` and logged to MLflow.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import json
import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from sweeper.analysis import (
    checkpoints,
    correlate,
    evidence,
    figures,
    ledger,
    paper,
    rankcheck,
    stats,
)
from sweeper.analysis.runs import (
    METRICS,
    RunRecord,
    find_runs,
    finished,
    open_client,
    read_artifact,
    stopped_early,
)
from sweeper.analysis.tables import (
    Table,
    rows_to_csv,
    rows_to_latex,
    rows_to_markdown,
    to_csv,
    to_latex,
    to_markdown,
)
from sweeper.core.mlflow_names import baselines_experiment, metric_tags
from sweeper.core.overrides import Options, parse, require_study
from sweeper.core.selection import HIGHER_IS_BETTER
from sweeper.core.trials import stage_ids
from sweeper.core.workspace import Workspace
from trainer.config import config_from_dict, flatten
from trainer.errors import UserError
from trainer.files import write_bytes_atomic, write_text_atomic
from trainer.image_sets import read_pixels
from trainer.scores import set_means

SET_ORDER = ("Set5", "Set14", "BSD100", "Urban100")
PAPER_METRICS = ("ssim", "psnr", "lpips")  # Tables 1, 2 and 6 print SSIM / PSNR / LPIPS
ARCH_NAMES = {"srgan": "SRGAN-DP", "esrgan": "ESRGAN-DP"}
USES = ("select_by",)  # of the keys that judge a run, the one the report takes: checkpoint=best's metric
ABLATION_ROWS = {  # Table 6, in the paper's order
    "vgg": "VGG loss",
    "static": "VGG loss + ResNet loss",
    "dp": "VGG loss + ResNet loss + dynamic weighting",
}


@dataclass
class Study:
    """A study's runs as read from MLflow."""

    name: str
    client: MlflowClient
    stages: list[RunRecord]  # stage parent runs, oldest first
    trials: list[RunRecord]  # trial runs that trained to the end, oldest first
    stopped: list[RunRecord] = field(default_factory=list)  # trials stopped by successive halving, oldest first
    configs: dict[str, dict] = field(default_factory=dict)  # run id -> config.yaml, read on demand
    results: dict[str, dict] = field(default_factory=dict)  # run id -> result.json, read on demand
    choice: checkpoints.Choice = field(default_factory=checkpoints.Choice)  # the generator each trial row shows
    picked: dict[str, dict] = field(default_factory=dict)  # run id -> the iteration `choice` picked for it, and why

    def config(self, run: RunRecord) -> dict:
        """The run's config.yaml artifact ({} when it has none)."""
        if run.run_id not in self.configs:
            self.configs[run.run_id] = read_artifact(self.client, run.run_id, "config.yaml")
        return self.configs[run.run_id]

    def result(self, run: RunRecord) -> dict:
        """The run's result.json artifact, per-image values included ({} when it has none)."""
        if run.run_id not in self.results:
            self.results[run.run_id] = read_artifact(self.client, run.run_id, "result.json")
        return self.results[run.run_id]

    def stage_of(self, run: RunRecord) -> RunRecord | None:
        parent = run.tags.get("mlflow.parentRunId")
        return next((s for s in self.stages if s.run_id == parent), None)

    def winner(self) -> RunRecord | None:
        """The winner of the latest stage that has one."""
        for stage in reversed(self.stages):
            run_id = stage.tags.get("sweeper.winner_run_id")
            match = [t for t in self.trials if t.run_id == run_id]
            if match:
                return match[0]
        return None


def select_by(study: Study) -> list[str]:
    """The study's selection metrics in order (its first stage's `sweeper.select_by`; lpips when unrecorded)."""
    return [
        m for m in (study.stages[0].tags.get("sweeper.select_by", "lpips") if study.stages else "lpips").split(",") if m
    ]


def read_config(client: MlflowClient, run_id: str, artifact: str = "config.yaml") -> dict:
    """A run's YAML (or JSON) artifact as a dict ({} when it has none)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, artifact, tmp)
        except (MlflowException, OSError):
            return {}
        loaded = yaml.safe_load(Path(path).read_text())
    return loaded if isinstance(loaded, dict) else {}


def load_study(client: MlflowClient, name: str) -> Study:
    runs = find_runs(client, "trial", name)
    trials = finished(runs)
    if not trials:
        raise UserError(f"study={name!r} has no finished trials yet; run `sweeper run study={name}` first")
    return Study(
        name=name, client=client, stages=find_runs(client, "stage", name), trials=trials, stopped=stopped_early(runs)
    )


def ordered_sets(runs: list[RunRecord]) -> list[str]:
    """Validation sets of the runs, the paper's sets in the paper's order first."""
    found = set().union(*(r.sets() for r in runs))
    return [s for s in SET_ORDER if s in found] + sorted(found - set(SET_ORDER))


def _distinct(values) -> str:
    return ", ".join(sorted({str(v) for v in values if v not in ("", None)})) or "n/a"


def metric_space(config: dict) -> str:
    """Where a run's PSNR/SSIM were computed, `metrics.space`: "Y" or "RGB" (Y for runs older than the key)."""
    return str((config.get("metrics") or {}).get("space", "y")).upper()


def generator_start(config: dict) -> str:
    """Where a run's GAN stage started: `model.init_from`'s file, PSNR pre-training, or scratch."""
    if (config.get("model") or {}).get("init_from"):
        return Path(config["model"]["init_from"]).name
    return "scratch" if (config.get("train") or {}).get("from_scratch", True) else "pre-training"


def provenance(study: Study, runs: list[RunRecord]) -> str:
    """The table's heading line: preset, data, metric space (`metrics.space`) and HR crop (`data.val_hr`), extractor
    weights, LPIPS (weights, network and version), where the generator started, commit."""
    configs = [study.config(r) for r in runs]
    data = [
        f"{'+'.join(c['data'].get('train_sets', []))} -> {'+'.join(c['data'].get('val_sets', []))}"
        for c in configs
        if isinstance(c.get("data"), dict)
    ]
    commits = [
        r.tags.get("sweeper.git_commit") or (study.stage_of(r) or r).tags.get("sweeper.git_commit") for r in runs
    ]
    return (
        f"preset={_distinct(r.params.get('preset') for r in runs)} · data={_distinct(data)} · "
        f"PSNR/SSIM on {_distinct(metric_space(c) for c in configs)} "
        f"(HR {_distinct((c.get('data') or {}).get('val_hr', 'mod4') for c in configs)}) · "
        f"weights={_distinct(r.tags.get('sweeper.weights') for r in runs)} "
        f"(LPIPS {_distinct(r.tags.get('sweeper.lpips') for r in runs)}, {_distinct(r.tags.get('sweeper.lpips_net', 'alex v0.1') for r in runs)}) · "
        f"generator from {_distinct(generator_start(c) for c in configs)} · "
        f"commit={_distinct(commits)}"
    ) + (
        ""
        if study.choice.kind == checkpoints.FINAL
        else f" · {study.choice.describe()}: iteration {_distinct(r.tags.get(CHECKPOINT_TAG) for r in runs)}, whole images"
    )


def repeats_of(study: Study, run: RunRecord) -> list[RunRecord]:
    """The finished repeats of `run`'s grid point in its stage (same settings, one run per seed, the latest of
    each, ordered by seed): `[run]` without repeats or for a trial stopped by halving."""
    if run.stopped_at is not None:
        return [run]
    same = [t for t in study.trials if t.stage == run.stage and (t.arch, t.setting, t.params.get("perceptual")) ==
            (run.arch, run.setting, run.params.get("perceptual"))]  # fmt: skip
    by_seed = {t.params.get("seed", ""): t for t in same}
    return [
        by_seed[k] for k in sorted(by_seed, key=lambda k: float(k) if k.replace(".", "").isdigit() else math.inf)
    ] or [run]


def metric_table(study: Study, key: str, kind: str, title: str, labelled: list[tuple[str, RunRecord]],
                 metrics: tuple[str, ...] = PAPER_METRICS, header: str | None = None) -> Table:  # fmt: skip
    """Rows = labelled runs, columns = their sets x metrics, values = final metrics (the mean over the point's
    repeats, +- their standard deviation, when it has several), marks from the paired comparison of each column
    (`significance`). A trial stopped by successive halving keeps its row, labelled with the budget it reached
    and left out of the marks."""
    runs = [r for _, r in labelled]
    groups = [repeats_of(study, r) for r in runs]
    sets = ordered_sets(runs)
    columns = [(s, m) for s in sets for m in metrics]
    per_repeat = [np.array([[r.value(s, m) for s, m in columns] for r in g]) for g in groups]
    values = [g.mean(axis=0).tolist() for g in per_repeat]
    rows = [label if r.stopped_at is None else f"{label} (stopped at {r.stopped_at} it)" for label, r in labelled]
    table = Table(key, kind, title, header or provenance(study, runs), rows, columns, values)
    if any(len(g) > 1 for g in groups):
        table.spread = [
            (g.std(axis=0, ddof=1) if len(g) > 1 else np.full(len(columns), np.nan)).tolist() for g in per_repeat
        ]
        counts = sorted({len(g) for g in groups})
        table.spread_kind = f"std over {'/'.join(map(str, counts))} repeats"
        table.notes.append(f"Cells: mean over each point's repeats (R = {'/'.join(map(str, counts))}) ± the standard deviation "
                           "of the repeats' values (the seed-to-seed spread, not an interval; the marks use the paired intervals).")  # fmt: skip
    table.unranked = {i for i, r in enumerate(runs) if r.stopped_at is not None}
    significance(study, table, groups)
    if table.unranked:
        table.notes.append(
            'Rows "stopped at N it" were stopped by successive halving (scheduler=sha): their values are '
            "at N iterations, not compared with the rows that trained to the end; the winner is chosen "
            "among those."
        )
    return table


def significance(study: Study, table: Table, groups: list[list[RunRecord]]) -> None:
    """Mark, per column, the row separated from all others as best and the rows not separable from the best
    as tied (`stats.compare` on the per-image values of that set, paired by image and by the seeds every row
    has); a column whose rows lack per-image values stays unmarked. Adds a note saying which intervals were used."""
    marks = [["" for _ in table.columns] for _ in table.rows]
    used: list[stats.Comparison] = []
    for j, (set_name, metric) in enumerate(table.columns):
        ranked = [i for i, v in enumerate(table.column(j)) if i not in table.unranked and not math.isnan(v)]
        if len(ranked) < 2:
            continue
        seeds = set.intersection(*({r.params.get("seed", "") for r in groups[i]} for i in ranked))
        results = [
            [evidence.only_set(study.result(r), set_name) for r in groups[i] if r.params.get("seed", "") in seeds]
            for i in ranked
        ]
        if not seeds or len({len(r) for r in results}) != 1:
            continue
        ev = evidence.arrange(results, metric, metric_space(study.config(groups[ranked[0]][0])).lower())
        if ev is None:
            continue
        c = stats.compare(ev.m, HIGHER_IS_BETTER[metric], [str(i) for i in ranked], ev.groups, metric)
        if c.kind == "untested":
            continue
        used.append(c)
        for i, row in zip(ranked, c.rows):
            marks[i][j] = (
                "best" if row.best and c.kind == "winner" else "tie" if c.kind == "tie" and not row.separated else ""
            )
    table.significance = marks
    if used:
        tests = sorted({f"{c.interval}; p-values: {c.test}" for c in used})
        table.notes.append("Marks from paired comparisons per column: " + " | ".join(tests) + ".")
    else:
        table.notes.append("No marks: the runs carry no per-image values (or one value per set and one seed), so no "
                           "difference between rows can be tested; the best mean is not marked.")  # fmt: skip


def latest_per(runs: list[RunRecord], key) -> list[RunRecord]:
    """One run per key value (the latest; `runs` are oldest first), in first-seen order."""
    picked: dict = {}
    for r in runs:
        picked[key(r)] = r
    return list(picked.values())


def stage_groups(study: Study) -> list[tuple[str, list[RunRecord]]]:
    """(stage, its finished trials, stopped ones included) in stage order; trials whose stage has no parent run
    form their own group."""
    trials = study.trials + study.stopped
    names = [s.stage for s in study.stages] + sorted({t.stage for t in trials} - {s.stage for s in study.stages})
    return [(n, [t for t in trials if t.stage == n]) for n in dict.fromkeys(names)]


def varying(runs: list[RunRecord]) -> set[str]:
    """Which of mu, beta, perceptual and arch take more than one value (beta among finite mu, unless every
    mu is inf: a beta stage at mu=inf, where beta has no effect)."""
    out = {name for name in ("mu", "perceptual", "arch") if len({r.params.get(name) for r in runs}) > 1}
    finite = [r for r in runs if not math.isinf(r.mu)] or runs
    if len({r.beta for r in finite}) > 1:
        out.add("beta")
    return out


def sweep_tables(study: Study) -> list[tuple[Table, list[RunRecord]]]:
    """Tables 1 (mu), 2 (beta) and 6 (ablation), one per stage and arch, with the runs behind them."""
    out = []
    for stage, runs in stage_groups(study):
        for arch in sorted({r.arch for r in runs}):
            group = [r for r in runs if r.arch == arch]
            vary = varying(group)
            name = ARCH_NAMES.get(arch, arch)
            if vary == {"mu"}:
                rows = sorted(latest_per(group, lambda r: r.mu), key=lambda r: r.order)
                fixed = _distinct(r.beta for r in rows if not math.isinf(r.mu))
                title = f"Table 1: {name} under different mu ({fixed}; stage {stage})"
                labelled = [(r.mu_label, r) for r in rows]
                table = metric_table(study, f"table1_{stage}_{arch}", "mu", title, labelled)
                if any(math.isinf(r.mu) for r in rows):
                    table.notes.append("mu=inf means the VGG loss only, the original perceptual loss.")
            elif vary == {"beta"}:
                rows = sorted(latest_per(group, lambda r: r.beta), key=lambda r: r.beta)
                title = f"Table 2: {name} under different beta ({_distinct(r.mu_label for r in rows)}; stage {stage})"
                table = metric_table(study, f"table2_{stage}_{arch}", "beta", title, [(r.beta, r) for r in rows])
                if all(math.isinf(r.mu) for r in rows):
                    table.notes.append(
                        "mu=inf won the mu stage: the loss is VGG only, so beta has no effect on these rows."
                    )
            elif "perceptual" in vary and "arch" not in vary:
                by_loss = {r.params.get("perceptual"): r for r in group}
                rows = [by_loss[k] for k in ABLATION_ROWS if k in by_loss]
                title = f"Table 6: {name} under different conditions (stage {stage})"
                labelled = [(ABLATION_ROWS[r.params["perceptual"]], r) for r in rows]
                table = metric_table(study, f"table6_{stage}_{arch}", "ablation", title, labelled)
            else:
                continue
            out.append((table, rows))
    return out


def correlation_tables(
    study: Study, proxy: str = "srgan", target: str = "esrgan"
) -> list[tuple[Table, list[RunRecord]]]:
    """Table 4, one per validation set, when settings ran with both archs."""
    pairs = correlate.paired_runs(study.trials, proxy, target)
    if len(pairs) < 2:
        return []
    runs = [r for _, p, t in pairs for r in (p, t)]
    header = provenance(study, runs)
    out = []
    for s in ordered_sets(runs):
        columns = [(ARCH_NAMES[a], m) for a in (proxy, target) for m in METRICS]
        values = [[r.value(s, m) for r in (p, t) for m in METRICS] for _, p, t in pairs]
        title = f"Table 4: hyperparameter combinations, {ARCH_NAMES[proxy]} vs {ARCH_NAMES[target]} on {s}"
        table = Table(f"table4_{s}", "correlation", title, header, [lbl for lbl, _, _ in pairs], columns, values)
        table.notes.append("Unmarked: the paper marks the best and the worst of each column without intervals; the "
                           "rank agreement below is the comparison this table supports.")  # fmt: skip
        out.append((table, runs))
    return out


def table3(study: Study) -> tuple[Table, list[RunRecord]] | None:
    """Table 3: the search's winner against its promoted ESRGAN-DP run or, in a study that ran both archs,
    both archs at the setting the proxy ranks best (by the study's selection metric)."""
    promoted = promoted_runs(study)
    sources = [t for p in promoted[-1:] for t in study.trials if t.run_id == p.tags.get("sweeper.promoted_from_run_id")]
    if sources:
        pair = [sources[0], promoted[-1]]
    else:
        try:
            results = correlate.correlate_runs(study.trials, "srgan", "esrgan")
        except UserError:  # fewer than 3 shared settings
            return None
        best = correlate.gate(results, correlate.selection_metric(None, study.stages)).best_proxy
        pair = next([p, t] for lbl, p, t in correlate.paired_runs(study.trials, "srgan", "esrgan") if lbl == best)
    labelled = [(f"{ARCH_NAMES.get(r.arch, r.arch)} ({r.setting})", r) for r in pair]
    title = "Table 3: SRGAN-DP vs ESRGAN-DP in LPIPS at the selected hyperparameters"
    return metric_table(study, "table3", "archs", title, labelled, ("lpips",)), pair


def promoted_runs(study: Study) -> list[RunRecord]:
    """Finished runs promoted from this study (`sweeper promote`), in any experiment, at the report's checkpoint."""
    return [
        at_checkpoint(study, r)
        for r in finished(find_runs(study.client, "trial", None, promoted_from_study=study.name))
    ]


def in_space(run: RunRecord, space: str) -> RunRecord:
    """`run` with its `<set>/psnr` and `<set>/ssim` taken from the `space` ("y" | "rgb") values it logged beside
    them (a baseline is scored in both), so that every row of a table is in the same space."""
    spaced = {f"{k.rsplit('_', 1)[0]}": v for k, v in run.metrics.items() if k.endswith(f"_{space}") and "/" in k}
    return dataclasses.replace(run, metrics={**run.metrics, **spaced})


def table5(study: Study, bicubic: RunRecord | None) -> tuple[Table, list[RunRecord]] | None:
    """Table 5: the study's winner and runs promoted from it against bicubic and the baselines (`sweeper evaluate
    folder=DIR method=NAME`), one row per method (a column of the paper's Table 5), all in the study's metric space.
    Our rows are our checkpoints evaluated on whole images as the baselines are (`whole_image_run`); rows scored
    another way than the rest (other HR crop, a run whose checkpoint is gone) are shown but never marked."""
    ours = [r for r in [study.winner(), *promoted_runs(study)] if r]
    if not ours:
        return None
    config = study.config(ours[0])
    space = metric_space(config).lower()
    baselines = [
        b
        for b in finished(find_runs(study.client, None, None, baseline="true"))
        if b.tags.get("sweeper.method") != "bicubic"
    ]
    labelled = [("Bicubic", in_space(bicubic, space))] if bicubic else []
    labelled += [(b.tags.get("sweeper.label", b.name), in_space(b, space)) for b in baselines]
    scored = {r.run_id: whole_image_run(study, r) for r in ours}  # whole images, as the baselines are
    labelled += [(f"{ARCH_NAMES.get(r.arch, r.arch)} ({r.setting}, ours)", in_space(s, space) if (s := scored[r.run_id]) else r)
                 for r in ours]  # fmt: skip
    title = "Table 5: comparison with bicubic and baselines on the benchmark sets"
    table = metric_table(study, "table5", "baselines", title, labelled, METRICS, provenance(study, ours))
    data = config.get("data", {})
    hr = data.get("val_hr", "mod4")
    other_hr = {
        i
        for i, (_, r) in enumerate(labelled)
        if r.tags.get("sweeper.kind") == "baseline" and r.tags.get("sweeper.val_hr", "mod4") != hr
    }
    if other_hr:
        table.notes.append(
            f"Rows {', '.join(table.rows[i] for i in sorted(other_hr))} were scored on HR cropped otherwise than "
            f"data.val_hr={hr}: shown, never marked."
        )
    table.unranked |= other_hr
    if not bicubic:
        table.notes.append(
            "Bicubic is missing: its validation sets could not be read (see `sweeper evaluate bicubic`)."
        )
    generator = (
        "final generator" if study.choice.kind == checkpoints.FINAL else f"generator at {study.choice.describe()}"
    )
    table.notes.append(
        f"Our rows: each run's {generator} evaluated by `sweeper evaluate` on every whole image of each set, "
        "as the baselines are (when the report was first built; reused after)."
    )
    unscored = [r for r in ours if scored[r.run_id] is None]
    if unscored and (data.get("val_max_images") or data.get("val_crop")):
        table.unranked |= {i for i, (_, r) in enumerate(labelled) if r in unscored}
        table.notes.append(
            f"No checkpoint for {', '.join(r.setting for r in unscored)}: shown as validated during training, on at most "
            f"{data.get('val_max_images') or 'all'} images per set, centre-cropped to {data.get('val_crop') or 'full'} px: not comparable, never marked."
        )
    return table, ours


def evaluation_run(study: Study, method: str, config: dict, tags: dict[str, str], sets: list[str] | None = None,
                   strict: bool = False) -> RunRecord | None:  # fmt: skip
    """`sweeper evaluate METHOD` (bicubic or a generator checkpoint) on `sets` (default: the validation sets of
    `config`), whole images, under its scoring protocol, logged once in the experiment `baselines` (out of the
    studies' experiments, whose runs are all trials and stages) as a run tagged `sweeper.kind=baseline` and
    `tags`, its per-image values as `per_image.json`, and reused while they match; None when it cannot be
    scored (sets unreadable, checkpoint gone), or with `strict` the UserError saying why."""
    from sweeper.analysis import (
        evaluate,
    )  # torch: imported where a generator or bicubic is scored, not by `sweeper run`
    from trainer.image_sets import resolve_root

    cfg = config_from_dict(config)
    sets = sets or cfg.data.val_sets
    key = evaluate.eval_key(cfg, sets) + f" lpips={cfg.metrics.lpips_net}{cfg.metrics.lpips_version}"
    wanted = {k.removeprefix("sweeper."): v for k, v in tags.items()}
    logged = [
        r for r in finished(find_runs(study.client, "baseline", None, **wanted)) if r.tags.get("sweeper.eval") == key
    ]
    if logged:
        return logged[-1]
    protocol = {k: v for k, v in flatten(config).items() if k in evaluate.PROTOCOL_KEYS}
    try:
        rows = evaluate.evaluate(
            method, resolve_root(cfg.data.root or None), sets, cfg.upscale, use_lpips=True, config=protocol
        )
    except UserError as e:
        if strict:
            raise
        print(f"note: no {tags.get('sweeper.label', method)} row in Table 5: {e}")
        return None
    m = cfg.metrics
    tags = {
        "sweeper.kind": "baseline",
        **tags,
        "sweeper.eval": key,
        **metric_tags(
            {"space": m.space, "lpips_net": m.lpips_net, "lpips_version": m.lpips_version, "val_hr": cfg.data.val_hr}
        ),
    }
    run_id = study.client.create_run(
        baselines_experiment(study.client, study.name), run_name=tags.get("sweeper.label", method), tags=tags
    ).info.run_id
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"{s}/{k}", float(v), now, 0)
        for s, images in evaluate.by_set(rows).items()
        for k, v in set_means(images.values(), m.space).items()
        if v is not None
    ]
    study.client.log_batch(run_id, metrics=metrics)
    study.client.log_text(run_id, json.dumps(evaluate.by_set(rows)), "per_image.json")
    study.client.set_terminated(run_id)
    return next(r for r in find_runs(study.client, "baseline", None, **wanted) if r.run_id == run_id)


def bicubic_run(study: Study) -> RunRecord | None:
    """The bicubic baseline on the winner's validation sets (`evaluation_run`, tagged `sweeper.method=bicubic`)."""
    winner = study.winner()
    config = study.config(winner) if winner else {}
    if not config:
        return None
    return evaluation_run(
        study, "bicubic", config, {"sweeper.baseline": "true", "sweeper.method": "bicubic", "sweeper.label": "Bicubic"}
    )


def whole_image_run(study: Study, run: RunRecord) -> RunRecord | None:
    """`run`'s final generator (its result.json's checkpoint) evaluated on whole images of its validation sets, as
    bicubic is (`evaluation_run`, tagged `sweeper.method=checkpoint`, `sweeper.source_run`; computed once and
    reused, also once the checkpoint is gone); None when it was never evaluated and its checkpoint is gone.
    A run at another checkpoint than the final (`at_checkpoint`) already holds its whole-image values."""
    if CHECKPOINT_TAG in run.tags:
        return run
    checkpoint = read_config(study.client, run.run_id, "result.json").get("checkpoint")
    config = study.config(run)
    if not checkpoint or not config:
        return None
    tags = {
        "sweeper.method": "checkpoint",
        "sweeper.source_run": run.run_id,
        "sweeper.label": f"{run.name} (whole images)",
    }
    return evaluation_run(study, checkpoint, config, tags)


CHECKPOINT_TAG = "sweeper.checkpoint_iter"  # on a run `at_checkpoint` rewrote: the iteration its values are from


def snapshot_run(study: Study, run: RunRecord, step: int, sets: list[str] | None = None) -> RunRecord:
    """The snapshot `run` kept at `step` evaluated on whole images of `sets` (default: its validation sets),
    as `whole_image_run` evaluates its final generator (computed once, tagged `sweeper.iter`)."""
    from trainer.checkpoint import snapshot_path  # torch, as the scoring: not imported by `sweeper run`

    folder = Path(study.result(run)["checkpoint"]).parent.parent
    tags = {
        "sweeper.method": "checkpoint",
        "sweeper.source_run": run.run_id,
        "sweeper.iter": str(step),
        "sweeper.label": f"{run.name} iter {step} (whole images)",
    }
    scored = evaluation_run(study, str(snapshot_path(folder, step)), study.config(run), tags, sets, strict=True)
    assert scored is not None  # strict: a failure raised
    return scored


def held_out(study: Study, run: RunRecord, step: int) -> float | None:
    """The selection metric of `run`'s snapshot at `step`, averaged over the held-out sets (None: not measured)."""
    sets, metric = list(study.choice.holdout), study.choice.select_by or "lpips"
    scored = snapshot_run(study, run, step, sets)
    values = [scored.metrics.get(f"{s}/{metric}") for s in sets]
    return None if any(v is None for v in values) else float(np.mean([v for v in values if v is not None]))


def at_checkpoint(study: Study, run: RunRecord) -> RunRecord:
    """`run` with the values of its generator at the report's checkpoint (`study.choice`): that snapshot evaluated
    on whole images of its validation sets, per-image values included (`study.results`), tagged with its iteration
    (`CHECKPOINT_TAG`); `run` itself for the final iterate. The pick is recorded in `study.picked`."""
    choice = study.choice
    if choice.kind == checkpoints.FINAL or CHECKPOINT_TAG in run.tags:
        return run
    trial = f"trial {run.name} ({run.setting})"
    if not study.result(run).get("checkpoint") or not study.config(run):
        raise UserError(f"{choice.describe()}: {trial} recorded no checkpoint; report it with checkpoint=final")
    from trainer.checkpoint import snapshot_steps  # torch, as the scoring: not imported by `sweeper run`

    kept = snapshot_steps(Path(study.result(run)["checkpoint"]).parent.parent)
    scores: dict[int, float | None] = {}
    if choice.kind == checkpoints.BEST:
        scores = {step: held_out(study, run, step) for step in kept}
        step = checkpoints.best_iteration(scores, choice.select_by or "lpips", trial)
    else:
        step = checkpoints.fixed_iteration(choice.iteration or 0, kept, trial)
    scored = snapshot_run(study, run, step)
    values = {k: v for k, v in scored.metrics.items() if "/" in k}
    final = {s: {k.split("/")[1]: v for k, v in values.items() if k.startswith(f"{s}/")} for s in scored.sets()}
    means = {
        f"mean/{m}": float(np.mean([f[m] for f in final.values()]))
        for m in METRICS
        if all(m in f for f in final.values())
    }
    per_image = read_artifact(study.client, scored.run_id, "per_image.json")
    study.results[run.run_id] = {**study.result(run), "final": final, "per_image": per_image}
    row = {"stage": run.stage, "setting": run.setting, "seed": run.params.get("seed", ""), "run": run.name,
           "iteration": step, "kept": " ".join(map(str, kept))}  # fmt: skip
    if scores:
        row[f"held-out {choice.select_by}"] = " ".join(f"{k}:{v:.4f}" for k, v in scores.items() if v is not None)
    study.picked[run.run_id] = row
    return dataclasses.replace(
        run, metrics={**run.metrics, **values, **means}, tags={**run.tags, CHECKPOINT_TAG: str(step)}
    )


def choose_checkpoints(study: Study, choice: checkpoints.Choice) -> None:
    """Rewrite the study's finished trials at `choice` (`at_checkpoint`), after refusing a `best` that would
    select on a set the tables report; a study's trials stopped by halving keep their values at the stop."""
    if choice.kind == checkpoints.FINAL:
        return
    tested = sorted({s for r in study.trials for s in (study.config(r).get("data") or {}).get("val_sets", [])})
    checkpoints.check_holdout(choice, tested)
    study.choice = checkpoints.with_metric(choice, choice.select_by or select_by(study)[0])
    study.trials = [at_checkpoint(study, r) for r in study.trials]


SAMPLE_NAME = re.compile(r"^(\d+)_(.+)\.png$")  # trainer.train.validate: <step>_<set>_<image>.png


def latest_samples(client: MlflowClient, run: RunRecord) -> dict[str, str]:
    """Crop name (`<set>_<image>`) -> artifact path of its latest validation sample."""
    latest: dict[str, tuple[int, str]] = {}
    for info in client.list_artifacts(run.run_id, "samples"):
        m = SAMPLE_NAME.match(Path(info.path).name)
        if m and int(m[1]) >= latest.get(m[2], (-1, ""))[0]:
            latest[m[2]] = (int(m[1]), info.path)
    return {name: path for name, (_, path) in latest.items()}


def comparison_grid(client: MlflowClient, labelled: list[tuple[str, RunRecord]], title: str) -> bytes | None:
    """The same crops across settings (Figs. 6-7), from the runs' `samples/` artifacts; None without samples."""
    samples = [latest_samples(client, r) for _, r in labelled]
    names = sorted(set().union(*samples))[:3]
    if not names:
        return None
    tiles = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            row = []
            for (_, run), found in zip(labelled, samples):
                path = found.get(name)
                row.append(read_pixels(client.download_artifacts(run.run_id, path, tmp)) if path else None)
            tiles.append(row)
    return figures.comparison_grid(names, [label for label, _ in labelled], tiles, title)


def histories(
    client: MlflowClient, study: Study, runs: list[RunRecord], set_name: str
) -> dict[str, dict[str, list[figures.History]]]:
    """Validation history per grid point: label -> metric -> one [(step, value)] per repeat (`repeats_of`)."""
    out = {}
    for r in runs:
        group = repeats_of(study, r)
        if r.run_id != group[0].run_id:  # drawn with its point's first repeat
            continue
        stopped = "" if r.stopped_at is None else f" (stopped at {r.stopped_at})"
        label = f"{ARCH_NAMES.get(r.arch, r.arch)} {r.setting}{stopped}"  # the figure is the stage's
        out[label] = {
            m: [[(h.step, h.value) for h in client.get_metric_history(g.run_id, f"{set_name}/{m}")] for g in group]
            for m in METRICS
        }
    return out


@dataclass
class Writer:
    """Writes tables and figures under `out` atomically and gathers the README's sections."""

    out: Path
    sections: list[str] = field(default_factory=list)

    def table(self, table: Table) -> None:
        md = to_markdown(table)
        for suffix, text in ((".md", md), (".csv", to_csv(table)), (".tex", to_latex(table))):
            write_text_atomic(self.out / "tables" / f"{table.key}{suffix}", text)
        links = f"[CSV](tables/{table.key}.csv) · [LaTeX](tables/{table.key}.tex)"
        self.sections.append(f"{md}\n{links}\n")

    def figure(self, name: str, data: bytes | None, caption: str) -> None:
        if data is not None:
            write_bytes_atomic(self.out / "figures" / f"{name}.png", data)
            self.sections.append(f"![{caption}](figures/{name}.png)\n\n_{caption}_\n")

    def text(self, markdown: str) -> None:
        self.sections.append(markdown)

    def rows(self, key: str, title: str, rows: list[dict], notes: str = "") -> None:
        """A plain table of dict rows (not the paper's metric layout) as Markdown, CSV and LaTeX."""
        for suffix, text in (
            (".md", rows_to_markdown(rows)),
            (".csv", rows_to_csv(rows)),
            (".tex", rows_to_latex(rows, title)),
        ):
            write_text_atomic(self.out / "tables" / f"{key}{suffix}", text)
        self.sections.append(
            f"### {title}\n\n{rows_to_markdown(rows)}\n{notes}\n\n[CSV](tables/{key}.csv) · [LaTeX](tables/{key}.tex)\n"
        )


def banner(study: Study) -> str:
    """The warning on top when the numbers cannot be the paper's: random-init extractors or unavailable LPIPS."""
    presets = _distinct(r.params.get("preset") for r in study.trials)
    lines = []
    if any(r.tags.get("sweeper.weights") == "random" for r in study.trials):
        lines.append(
            f"> **{presets} preset, random-init extractors: NOT paper results.** The VGG19/ResNet-50 feature "
            "extractors were randomly initialised, so these numbers only show that the protocol runs end to end."
        )
    if any(r.tags.get("sweeper.lpips") == "unavailable" for r in study.trials):
        lines.append("> **LPIPS unavailable** (no AlexNet ImageNet weights): LPIPS columns read n/a.")
    return "\n>\n".join(lines)


def correlation_section(study: Study, writer: Writer) -> None:
    """Table 4's statistics: agreement per set and metric, the small-n warning and the promotion verdict."""
    try:
        results = correlate.correlate_runs(study.trials, "srgan", "esrgan", study.result)
    except UserError:  # fewer than 3 shared settings: Table 4 stands without statistics
        return
    key = correlate.selection_metric(None, study.stages)
    write_text_atomic(writer.out / "tables" / "table4_stats.csv", rows_to_csv(correlate.to_rows(results)))
    writer.text(
        f"### Table 4 (statistics): SRGAN-DP vs ESRGAN-DP rank agreement\n\n{correlate.summary(results, key)}\n"
        "[CSV](tables/table4_stats.csv)\n"
    )


def lpips_chart(table: Table) -> bytes | None:
    """Fig. 2's bar chart from a table's LPIPS columns (None when LPIPS was not measured)."""
    cols = [j for j, (_, m) in enumerate(table.columns) if m == "lpips"]
    values = [[row[j] for j in cols] for row in table.values]
    if not any(not math.isnan(v) for row in values for v in row):
        return None
    return figures.lpips_bars(table.rows, [table.columns[j][0] for j in cols], values, table.title)


def pooled(study: Study, runs: list[RunRecord]) -> tuple[list[RunRecord], figures.Spread]:
    """Each run as its point's mean over repeats (metrics averaged), and the std over repeats per metric key
    (empty without repeats)."""
    out, spread = [], {}
    for run in runs:
        group = repeats_of(study, run)
        if len(group) < 2:
            out.append(run)
            continue
        keys = set.intersection(*(set(r.metrics) for r in group))
        values = {k: np.array([r.metrics[k] for r in group]) for k in keys}
        out.append(dataclasses.replace(run, metrics={k: float(v.mean()) for k, v in values.items()}))
        spread[run.run_id] = {k: float(v.std(ddof=1)) for k, v in values.items()}
    return out, spread


@dataclass
class Crops:
    """Where the report finds trial checkpoints for fixed-box crops, and which images and boxes to show."""

    workspace: Workspace
    config: dict
    images: list[str]
    boxes: dict


def write_section(client: MlflowClient, study: Study, writer: Writer, table: Table, runs: list[RunRecord],
                  crops: Crops | None = None) -> None:  # fmt: skip
    """A table and the figures that go with its kind."""
    writer.table(table)
    sets = ordered_sets(runs)
    note = figures.unmeasured_note(runs, sets) + figures.stopped_note(runs)
    means, spread = pooled(study, runs)
    if spread:
        note += " Points are the mean over each setting's repeats; error bars their std."
    if table.kind == "mu":
        writer.figure(
            f"{table.key}_vs_mu",
            figures.metrics_vs_mu(means, sets, table.title, spread),
            f"{table.title}: metrics against mu.{note}",
        )
    if table.kind == "beta":
        writer.figure(
            f"{table.key}_per_beta",
            figures.metrics_per_beta(means, sets, table.title, spread),
            f"{table.title}: metrics per beta.{note}",
        )
    if table.kind in ("archs", "baselines"):
        writer.figure(f"{table.key}_lpips", lpips_chart(table), f"{table.title}: LPIPS per method and set (as Fig. 2)")
    if table.kind in ("mu", "beta", "ablation"):
        fixed = None
        if crops is not None:
            from sweeper.analysis import paper_figures  # torch (generator inference): not imported by `sweeper run`

            labelled = [
                (
                    label,
                    generator_file(
                        crops.workspace.trial_dir(
                            r.tags.get("sweeper.study", ""), r.stage, int(r.tags.get("sweeper.trial_number", -1))
                        ),
                        r,
                    ),
                )
                for label, r in zip(table.rows, runs)
            ]
            fixed = paper_figures.report_crops(crops.images, labelled, crops.config, crops.boxes, table.title)
        if fixed is not None and crops is not None:
            boxes = "; ".join(f"{k} {v}" for k, v in crops.boxes.items()) or "each image's default box"
            writer.figure(
                f"{table.key}_crops",
                fixed,
                f"{table.title}: GT, bicubic and each setting's generator on whole images, "
                f"zoomed at fixed boxes ({boxes}; change with crop=SET/NAME:x,y,w,h) (as Figs. 6-10)",
            )
        else:
            grid = comparison_grid(client, list(zip(table.rows, runs)), table.title)
            writer.figure(
                f"{table.key}_crops", grid, f"{table.title}: the same validation crops across settings (as Figs. 6-7)"
            )


def generator_file(trial_dir: Path, run: RunRecord) -> Path:
    """The generator whose values `run` shows: the snapshot of its checkpoint iteration, else the final one."""
    from trainer.checkpoint import snapshot_path  # torch: not imported by `sweeper run`

    step = run.tags.get(CHECKPOINT_TAG)
    return snapshot_path(trial_dir, int(step)) if step else trial_dir / "ckpt" / "last.pt"


def verdict_section(study: Study, writer: Writer) -> None:
    """Each stage's verdict (winner, tie or untested, `sweeper.verdict_summary`) and its comparison table."""
    for stage in study.stages:
        summary = stage.tags.get("sweeper.verdict_summary")
        if not summary:
            continue
        loud = (
            ""
            if stage.tags.get("sweeper.verdict") == "winner"
            else "**" + stage.tags.get("sweeper.verdict", "").upper() + ":** "
        )
        rows = read_rows(study.client, stage.run_id, "results/comparison.csv")
        title = f"Verdict of stage {stage.stage}"
        if rows:
            notes = (f"{loud}{summary}\n\nbehind_best: how much worse than the best point on average (metric units); low/high: "
                     "its interval; separated: the interval excludes 0 beyond select.min_effect; repeats_needed: an estimate.")  # fmt: skip
            writer.rows(f"verdict_{stage.stage}", title, rows, notes)
        else:
            writer.text(f"### {title}\n\n{loud}{summary}\n")


def read_rows(client: MlflowClient, run_id: str, name: str) -> list[dict]:
    """A CSV artifact of a run as dict rows ([] when it is missing)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, name, tmp)
        except (MlflowException, OSError):
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))


def paper_rows(study: Study, published: paper.Paper) -> tuple[list[dict], list[str]]:
    """Our finished runs beside the paper's published value for the same setting and set (each table that
    prints it), with the difference; PSNR/SSIM only where ours were measured in the paper's space."""
    rows, notes = [], set()
    runs = latest_per(study.trials, lambda r: (r.arch, r.mu, r.beta, r.params.get("perceptual")))
    for run in sorted(
        runs, key=lambda r: (r.arch, r.order, str(r.params.get("perceptual", "dp")))
    ):  # not by start time
        ours = {
            "arch": run.arch,
            "mu": run.params.get("mu", ""),
            "beta": run.beta,
            "perceptual": run.params.get("perceptual", "dp"),
        }
        space = metric_space(study.config(run)).lower()
        for table in published.tables.values():
            match = table.match(ours)
            if match is None:
                continue
            for set_name, values in match.values.items():
                for metric, theirs in values.items():
                    if metric != "lpips" and space != published.space:
                        notes.add(f"PSNR/SSIM left out: ours on {space.upper()}, the paper's on {published.space.upper()} "
                                  "(metrics.space=rgb measures them as the paper did)")  # fmt: skip
                        continue
                    value = run.value(set_name, metric)
                    if math.isnan(value):
                        continue
                    rows.append({"paper table": table.key, "setting": run.setting, "arch": run.arch, "set": set_name,
                                 "metric": f"{metric} ({published.space.upper()})" if metric != "lpips" else "lpips",
                                 "ours": value, "paper": theirs, "delta": value - theirs})  # fmt: skip
    tables = [t.key for t in published.tables.values()]
    rows.sort(key=lambda row: tables.index(str(row["paper table"])))  # by table, each in the paper's row order
    return rows, sorted(notes)


def paper_section(study: Study, writer: Writer) -> None:
    """The selection rule applied to the paper's own tables (`sweeper paper-check`), and our numbers beside the
    paper's where setting and set match."""
    published = paper.load()
    metrics = select_by(study)
    checks = paper.check(metrics, paper=published)
    writer.text(f"### The selection rule on the paper's own tables (`sweeper paper-check select_by={','.join(metrics)}`)\n\n"
                f"```\n{paper.render(checks, published)}```\n")  # fmt: skip
    rows, notes = paper_rows(study, published)
    if rows:
        notes.append(f"Paper: {published.source}, as printed (one training per setting); delta = ours - paper. "
                     f"LPIPS network: the paper does not say; ours as recorded in each run.")  # fmt: skip
        writer.rows("paper_vs_ours", "Ours beside the paper's published numbers", rows, "\n\n".join(notes))


def cost_section(writer: Writer, storage, stages: dict[str, int]) -> None:
    """The cost table: per stage and for the study, spent (from the ledgers) vs the naive protocol."""
    rows = ledger.cost_rows(ledger.study_costs(storage, stages))
    notes = ("Naive: every grid point trained to train.iters with its own pre-training, priced at the device-seconds per "
             "iteration this study measured. Ratios are spent / naive (iterations: GAN + pre-training).")  # fmt: skip
    writer.rows("cost", "Cost: spent vs the naive protocol", rows, notes)


def rank_check_section(writer: Writer, storage, stages: dict[str, int]) -> None:
    """`sweeper rank-check`'s table and figure for the stages that trained every trial to the end."""
    checks = []
    for name, sid in stages.items():
        select_by = storage.get_study_user_attrs(sid).get("select_by", "lpips")
        try:
            curves, iters, labels = rankcheck.stage_curves(storage, sid, select_by)
            checks.append(rankcheck.check_stage(name, curves, iters, select_by, Options(), labels))
        except UserError:  # a halving stage, or fewer than 2 complete trials: nothing to replay
            continue
    if checks:
        notes = "\n\n".join(rankcheck.summary(c) for c in checks)
        writer.rows(
            "rank_check",
            "Rank check: successive halving replayed on the full validation curves",
            rankcheck.to_rows(checks),
            notes,
        )
        intervals = rankcheck.interval_rows(checks)
        if intervals:
            writer.rows("rank_check_intervals", "Rank check: each rung's ranking with intervals", intervals,
                        rankcheck.interval_note(checks) + ".")  # fmt: skip
        points = {
            c.stage: [(r.budget / c.budgets[-1], r.kendall, r.spearman, r.winner_alive) for r in c.rungs]
            for c in checks
        }
        writer.figure(
            "rank_check",
            figures.rank_check(points),
            "Rank agreement of each rung with the final ranking (Kendall tau, Spearman rho)",
        )


def build(client: MlflowClient, name: str, out: Path, optuna_stages: tuple | None = None, crops: Crops | None = None,
          choice: checkpoints.Choice = checkpoints.FINAL_CHOICE) -> list[str]:  # fmt: skip
    """Write the study's tables and figures under `out` and README.md gathering them; returns the table keys.
    `optuna_stages` = (storage, stage name -> Optuna study id) adds the cost table and the rank check; `choice`:
    the generator of each trial the tables show (`checkpoints`; default the final one)."""
    study = load_study(client, name)
    choose_checkpoints(study, choice)
    writer = Writer(out)
    sections = sweep_tables(study) + correlation_tables(study)
    sections += [s for s in (table3(study), table5(study, bicubic_run(study))) if s]
    sections.sort(key=lambda s: s[0].key)
    for i, (table, runs) in enumerate(sections):
        write_section(client, study, writer, table, runs, crops)
        if table.kind == "correlation" and (i + 1 == len(sections) or sections[i + 1][0].kind != "correlation"):
            correlation_section(study, writer)
    if study.picked:
        notes = (f"Every trial row shows its generator at {study.choice.describe()}, evaluated on whole images of its "
                 "validation sets (rows stopped by halving keep their values at the stop).")  # fmt: skip
        writer.rows(
            "checkpoints", "Checkpoints: the iteration each trial's row shows", list(study.picked.values()), notes
        )
    verdict_section(study, writer)
    paper_section(study, writer)
    if optuna_stages:
        cost_section(writer, *optuna_stages)
        rank_check_section(writer, *optuna_stages)
    curves_section(client, study, writer)
    top = [
        f"# Study `{name}`: the paper's tables and figures, from MLflow",
        "",
        banner(study),
        "",
        f"Regenerate with `sweeper report study={name} --out {out}`.",
        "",
    ]
    write_text_atomic(out / "README.md", "\n".join(top) + "\n" + "\n".join(writer.sections))
    return [t.key for t, _ in sections]


def curves_section(client: MlflowClient, study: Study, writer: Writer) -> None:
    """The validation curves per set, one figure per stage when the study has several (`curves_<stage>_<set>`:
    a stage's settings only, so that an alternating search's 11 settings do not share one plot), else `curves_<set>`."""
    groups = stage_groups(study)
    for stage, runs in groups if len(groups) > 1 else [("", study.trials + study.stopped)]:
        for s in ordered_sets(runs):
            where = f"{s}, stage {stage}" if stage else s
            note = figures.unmeasured_note(runs, [s])
            writer.figure(
                f"curves_{stage}_{s}" if stage else f"curves_{s}",
                figures.validation_curves(histories(client, study, runs, s), where),
                f"Validation curves per setting on {where}; a setting with repeats: the mean over its repeats, the "
                f"band their min-max (the seeds' spread, not an interval).{note}",
            )


FIGURE_SRC = re.compile(r'src="(figures/[^"]+\.png)"')
HTML_STYLE = (
    "body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}td:first-child,th:first-child{text-align:left}"
    "img{max-width:100%}"
)


def to_html(out: Path, title: str) -> str:
    """The report's README.md as one self-contained HTML page: tables as HTML tables, figures embedded as
    data URIs (MLflow's artifact preview shows it whole; a Markdown preview there cannot load relative images).
    markdown-it-py (already installed with typer's rich) renders; only the figure links are rewritten here."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render((out / "README.md").read_text())

    def embed(m: re.Match[str]) -> str:
        return f'src="data:image/png;base64,{base64.b64encode((out / m.group(1)).read_bytes()).decode()}"'

    body = FIGURE_SRC.sub(embed, body)
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{HTML_STYLE}</style></head><body>\n{body}</body></html>\n"
    )


def log_report(client: MlflowClient, study: Study, out: Path, page: str) -> str | None:
    """Attach the report to the study's latest stage run (artifact folder `report/`, with `report.html`, the
    self-contained page MLflow previews); returns that run's id."""
    if not study.stages:
        return None
    run_id = study.stages[-1].run_id
    client.log_artifacts(run_id, str(out), "report")
    client.log_text(run_id, page, "report/report.html")
    return run_id


@dataclass(frozen=True)
class Written:
    """Where a report went: its folder, its tables' keys, and the MLflow run it is attached to (if any)."""

    out: Path
    tables: list[str]
    run_id: str | None


def main(tokens: list[str], out: Path | None = None, write_html: bool = False) -> None:
    """`sweeper report study=NAME [--out results/NAME] [--html] [workspace=... | tracking_uri=...] [crop=SET/NAME[:x,y,w,h] ...]
    [checkpoint=final|best|N [holdout=SET]]`."""
    from sweeper.analysis import paper_figures  # torch (generator inference): not imported by `sweeper run`

    images, boxes, tokens = paper_figures.parse_crop_tokens(tokens)
    own = {k: v for k, _, v in (t.partition("=") for t in tokens) if k in ("checkpoint", "holdout")}
    tokens = [t for t in tokens if t.partition("=")[0] not in own]
    choice = checkpoints.parse(own.get("checkpoint"), own.get("holdout"))
    opts = parse(tokens, allow_config=False, recorded=True, uses=USES)
    written = write(opts, out, images, boxes, write_html, choice)
    print(
        f"wrote {len(written.tables)} tables ({', '.join(written.tables) or 'none'}) and figures to {written.out}/README.md"
        + (f"; the same as one page, figures embedded: {written.out}/report.html" if write_html else "")
    )
    if written.run_id:
        print(f"logged under artifacts report/ of MLflow run {written.run_id}")


def write(opts: Options, out: Path | None = None, images: list[str] | None = None, boxes: dict | None = None,
          write_html: bool = False, choice: checkpoints.Choice = checkpoints.FINAL_CHOICE) -> Written:  # fmt: skip
    """The report of `opts.study` written to `out` (default `results/<study>`) and attached to its last stage run;
    `images` and `boxes` choose the fixed-box crops (`crop=` tokens); `write_html` adds report.html; `choice`
    the checkpoint each trial row shows (`select_by=` picks `best`'s metric, default the study's)."""
    name = require_study(opts)
    if opts.select_by and choice.kind != checkpoints.BEST:
        raise UserError(
            f"select_by={opts.select_by}: picks the snapshot of checkpoint=best (with holdout=SET); the tables "
            "show the verdict the run recorded (`sweeper run` with select_by= judges the trials again)"
        )
    client = open_client(opts)
    out = out or Path("results") / name
    try:
        _, _, storage, stages = stage_ids(opts)
    except UserError:  # the Optuna record is not reachable from here (tracking_uri= only): no cost or rank check
        storage, stages = None, {}
    study = load_study(client, name)
    winner = study.winner()
    crops = Crops(
        Workspace.resolve(opts.workspace, opts.storage, opts.tracking_uri),
        study.config(winner) if winner else {},
        images or [],
        boxes or {},
    )
    choice = dataclasses.replace(choice, select_by=choice.select_by or opts.select_by)
    keys = build(client, name, out, (storage, stages) if stages else None, crops, choice)
    page = to_html(out, f"Study {name}")
    if write_html:
        write_text_atomic(out / "report.html", page)
    return Written(out, keys, log_report(client, load_study(client, name), out, page))
