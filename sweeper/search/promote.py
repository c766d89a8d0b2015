"""`sweeper promote --to esrgan`: the search's winning (mu, beta) on the target architecture (section 4.3.3).

The winner comes from the latest finished stage of a completed search study (`--from`, default the
latest of `paper` and `beta_search`), read from MLflow. Promotion is refused, with the reason, while the
search is incomplete, when no correlation check (`sweeper correlate`) exists for the proxy and the target,
or when that check says the two disagree on the best setting; `--force` promotes anyway and says so on the
run. The run goes through the sweeper's single-run path (`sweeper train`), tagged with its source.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml
from mlflow import MlflowClient

from sweeper.analysis.runs import RunRecord, find_runs, open_client
from sweeper.core import studies
from sweeper.core.overrides import parse
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
            raise UserError(f"the search {name} is incomplete: stage {stage.name} has no winner yet; finish it with `sweeper run study={name}`")
    running = [s.stage for s in stages if not s.tags.get("sweeper.winner_run_id")]
    if running:
        raise UserError(f"the search {name} is incomplete: stage {', '.join(running)} has not finished; finish it with `sweeper run study={name}`")
    last = max(stages, key=lambda s: s.end_time or 0)
    winner_id = last.tags["sweeper.winner_run_id"]
    winner = [r for r in find_runs(client, "trial", name) if r.run_id == winner_id]
    if not winner:
        raise UserError(f"the winner of study {name} (MLflow run {winner_id}) is missing from the tracking store; re-run `sweeper run study={name}`")
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
            f"no correlation check of {proxy} against {target}: run `sweeper run study=correlation` and `sweeper correlate`, "
            "or pass --force to promote without one"
        )
    return max(checks, key=lambda r: r.start_time)


def gate(client: MlflowClient, source: Source, target: str, force: bool) -> dict[str, str]:
    """Refuse a promotion the correlation check does not support (unless `force`); returns the link tags."""
    tags = {
        "sweeper.promoted_from_study": source.study,
        "sweeper.promoted_from_stage": source.stage.stage,
        "sweeper.promoted_from_run_id": source.winner_run_id,
        "sweeper.promoted_forced": str(force).lower(),
    }
    try:
        check = correlation_check(client, source.arch, target)
    except UserError:
        if not force:
            raise
        print(f"warning: --force: promoting without a correlation check of {source.arch} against {target}")
        return tags
    tags["sweeper.correlation_run_id"] = check.run_id
    if check.tags.get("sweeper.best_agrees") != "true":  # "false", or "undefined" (constant or tied-at-the-top scores)
        reason = f"the correlation check (MLflow run {check.run_id}) does not support the proxy: {check.tags.get('sweeper.verdict', 'best settings differ')}"
        if not force:
            raise UserError(f"{reason}; pass --force to promote anyway")
        print(f"warning: --force: {reason}")
    return tags


def promotion_tokens(source: Source, to: str, tokens: list[str]) -> list[str]:
    """The `sweeper train` tokens: the winner's mu and beta on `to`, preset=paper unless overridden."""
    for token in tokens:
        key = token.partition("=")[0].strip()
        if key in DECIDED_BY_SEARCH:
            raise UserError(f"{key}= is decided by the search ({source.study}) and --to; remove it, or run `sweeper train` yourself")
    preset = [] if any(t.startswith("preset=") for t in tokens) else ["preset=paper"]
    return [f"arch={to}", f"mu={source.mu}", f"beta={source.beta}", *preset, *tokens]


def main(to: str, source: str | None, force: bool, dry_run: bool, overrides: list[str]) -> None:
    """`sweeper promote --to esrgan [--from STUDY] [--force] [--dry-run] [key=value ...]`."""
    if to not in ARCHS:
        raise UserError(f"--to {to!r} is not valid; choose one of {', '.join(ARCHS)}")
    opts = parse(overrides)
    client = open_client(opts)
    src = find_source(client, source)
    if src.arch == to:
        raise UserError(f"the search {src.study} already ran on arch={to}; promote to the other arch ({', '.join(a for a in ARCHS if a != to)})")
    tags = gate(client, src, to, force)
    tokens = promotion_tokens(src, to, overrides)
    cfg = build_config({**opts.config, "arch": to, "mu": src.mu, "beta": src.beta, "preset": opts.config.get("preset", "paper")})
    print(f"promoting the winner of {src.study} (stage {src.stage.stage}, run {src.winner_run_id}): mu={format_mu(cfg.mu)}, beta={cfg.beta} -> arch={to}")
    command = "sweeper train " + " ".join(tokens)
    if dry_run:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        print(f"command: {command}")
        print("tags: " + ", ".join(f"{k}={v}" for k, v in tags.items()))
        return
    print(command)
    train_one(tokens, extra_tags=tags)
