"""`sweeper promote --to esrgan`: the search's winning (mu, beta) on the target architecture (section 4.3.3).

The winner comes from the latest finished stage of a completed search study (`--from`, default the
latest of `paper` and `beta_search`), read from MLflow. Promotion is refused, with the reason, while the
search is incomplete, when no correlation check (`sweeper correlate`) exists for the proxy and the target,
or when that check says the two disagree on the best setting; `--force` promotes anyway and says so on the
run. A winner picked in a plumbing check (preset=smoke or random-init extractors) goes into preset=paper only
with `--allow-demo`. `--dry-run` always previews: the gate's verdict and why, the config and the command. The run goes through the sweeper's single-run path (`sweeper train`), tagged with its source.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml
from mlflow import MlflowClient

from sweeper.analysis.runs import RunRecord, find_runs, open_client
from sweeper.core import studies
from sweeper.core.overrides import flag_or_key, parse
from sweeper.search.train_one import train_one
from trainer.config import ARCHS, build_config, format_mu
from trainer.errors import UserError

DEFAULT_SOURCES = ("paper", "beta_search")
DECIDED_BY_SEARCH = ("mu", "beta", "arch")


@dataclass(frozen=True)
class Source:
    """A completed search: where its winner comes from."""

    study: str
    stage: RunRecord  # the latest finished stage run
    winner_run_id: str
    mu: str  # as logged: "0.5", "inf"
    beta: str
    arch: str  # the proxy the search ran on


def completed_search(client: MlflowClient, name: str) -> Source:
    """The winner of study `name`; UserError saying what is missing when a stage has not finished."""
    stages = find_runs(client, "stage", name)
    for stage in studies.load(name).stages:
        runs = [s for s in stages if s.stage == stage.name]
        if not any(s.tags.get("sweeper.winner_run_id") for s in runs):
            raise UserError(
                f"the search {name} is incomplete: stage {stage.name} has no winner yet; finish it with `sweeper run study={name}`"
            )
    running = [s.stage for s in stages if not s.tags.get("sweeper.winner_run_id")]
    if running:
        raise UserError(
            f"the search {name} is incomplete: stage {', '.join(running)} has not finished; finish it with `sweeper run study={name}`"
        )
    last = max(stages, key=lambda s: s.end_time or 0)
    winner_id = last.tags["sweeper.winner_run_id"]
    winner = [r for r in find_runs(client, "trial", name) if r.run_id == winner_id]
    if not winner:
        raise UserError(
            f"the winner of study {name} (MLflow run {winner_id}) is missing from the tracking store; re-run `sweeper run study={name}`"
        )
    return Source(name, last, winner_id, last.tags["winner.mu"], last.tags["winner.beta"], winner[0].arch)


def find_source(client: MlflowClient, name: str | None) -> Source:
    """`--from NAME`, or the most recently completed of the default search studies."""
    if name:
        return completed_search(client, name)
    found, reasons = [], []
    known = {e.name for e in client.search_experiments()}
    for candidate in DEFAULT_SOURCES:
        if candidate not in known:
            reasons.append(f"study {candidate} has no runs")
            continue
        try:
            found.append(completed_search(client, candidate))
        except UserError as e:
            reasons.append(str(e))
    if not found:
        raise UserError(f"no completed search to promote from ({'; '.join(reasons)}); or name one with --from STUDY")
    return max(found, key=lambda s: s.stage.end_time or 0)


def correlation_check(client: MlflowClient, proxy: str, target: str) -> RunRecord:
    """The latest `sweeper correlate` run for this proxy and target; UserError when there is none."""
    checks = [r for r in find_runs(client, "correlation", None, proxy=proxy, target=target) if r.status == "FINISHED"]
    if not checks:
        raise UserError(
            f"no correlation check of {proxy} against {target}: run `sweeper run study=correlation` and `sweeper correlate`"
        )
    return max(checks, key=lambda r: r.start_time)


def gate(client: MlflowClient, source: Source, target: str) -> tuple[dict[str, str], str | None]:
    """What the correlation check says of this promotion: the link tags, and why it is refused (None: it passes)."""
    tags = {
        "sweeper.promoted_from_study": source.study,
        "sweeper.promoted_from_stage": source.stage.stage,
        "sweeper.promoted_from_run_id": source.winner_run_id,
    }
    try:
        check = correlation_check(client, source.arch, target)
    except UserError as e:
        return tags, str(e)
    tags["sweeper.correlation_run_id"] = check.run_id
    if check.tags.get("sweeper.best_agrees") != "true":  # "false", or "undefined" (constant or tied-at-the-top scores)
        return (
            tags,
            f"the correlation check (MLflow run {check.run_id}) does not support the proxy: {check.tags.get('sweeper.verdict', 'best settings differ')}",
        )
    return tags, None


def demo_winner(source: Source) -> str | None:
    """How the winner was picked when that was a plumbing check (preset=smoke or random-init extractors), else None."""
    preset, weights = source.stage.tags.get("sweeper.preset", ""), source.stage.tags.get("sweeper.weights", "")
    if preset != "smoke" and weights != "random":
        return None
    return (
        f"preset={preset or '?'}, weights={weights or '?'}, by mean {source.stage.tags.get('sweeper.select_by', '?')}"
    )


def promotion_tokens(source: Source, to: str, tokens: list[str]) -> list[str]:
    """The `sweeper train` tokens: the winner's mu and beta on `to`, preset=paper unless overridden."""
    for token in tokens:
        key = token.partition("=")[0].strip()
        if key in DECIDED_BY_SEARCH:
            raise UserError(
                f"{key}= is decided by the search ({source.study}) and --to; remove it, or run `sweeper train` yourself"
            )
    preset = [] if any(t.startswith("preset=") for t in tokens) else ["preset=paper"]
    return [f"arch={to}", f"mu={source.mu}", f"beta={source.beta}", *preset, *tokens]


def main(
    to: str, source: str | None, force: bool, dry_run: bool, overrides: list[str], allow_demo: bool = False
) -> None:
    """`sweeper promote --to esrgan [--from STUDY | study=STUDY] [--force] [--allow-demo] [--dry-run] [key=value ...]`."""
    if to not in ARCHS:
        raise UserError(f"--to {to!r} is not valid; choose one of {', '.join(ARCHS)}")
    opts = parse(overrides)
    source = flag_or_key("--from", source, "study", opts.study, "studies")
    overrides = [t for t in overrides if t.partition("=")[0].strip() != "study"]  # not a `sweeper train` key
    client = open_client(opts)
    src = find_source(client, source)
    if src.arch == to:
        raise UserError(
            f"the search {src.study} already ran on arch={to}; promote to the other arch ({', '.join(a for a in ARCHS if a != to)})"
        )
    tags, refused = gate(client, src, to)
    tokens = promotion_tokens(src, to, overrides)
    cfg = build_config(
        {**opts.config, "arch": to, "mu": src.mu, "beta": src.beta, "preset": opts.config.get("preset", "paper")}
    )
    demo = demo_winner(src) if cfg.preset == "paper" else None
    print(f"promoting the winner of {src.study} (stage {src.stage.stage}, run {src.winner_run_id}, "
          f"{demo or 'picked at preset=' + src.stage.tags.get('sweeper.preset', '?')}): "
          f"mu={format_mu(cfg.mu)}, beta={cfg.beta} -> arch={to}, preset={cfg.preset}")  # fmt: skip
    demo_refusal = (f"that winner was picked in a plumbing check ({demo}), not a paper result; "
                    "pass --allow-demo to promote it into preset=paper anyway") if demo else None  # fmt: skip
    gate_text = (
        f"would be refused: {refused}; or pass --force"
        if refused
        else "passes: "
        + (f"the correlation check (MLflow run {tags['sweeper.correlation_run_id']}) agrees on the best setting")
    )
    command = "sweeper train " + " ".join(tokens)
    if dry_run:
        print(f"gate: {gate_text}")
        if demo_refusal:
            print(f"gate: would be refused: {demo_refusal}")
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        print(f"command: {command}")
        print("tags: " + ", ".join(f"{k}={v}" for k, v in tags.items()))
        return
    if refused and not force:
        raise UserError(f"{refused}; or pass --force to promote anyway (--dry-run previews)")
    if demo_refusal and not allow_demo:
        raise UserError(demo_refusal)
    if refused:
        print(f"warning: --force: {refused}")
    tags["sweeper.promoted_forced"] = str(bool(refused)).lower()
    if demo:
        tags["sweeper.promoted_demo"] = demo
    print(command)
    train_one(tokens, extra_tags=tags)
