"""The successive-halving options `scheduler=none|sha`, `scheduler.eta=3`, `scheduler.min_iters=N`, as
`sweeper plan` and `sweeper rank-check` take them (`sweeper run` reads the same keys)."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.config import check_choice, parse_value
from trainer.errors import UserError

SCHEDULERS = ("none", "sha")


@dataclass(frozen=True)
class Halving:
    scheduler: str = "none"
    eta: int = 3
    min_iters: int | None = None  # None: `sweeper.halving.rung_budgets`' default


def _whole(key: str, text: str, minimum: int) -> int:
    value = parse_value(text)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{key}={text!r}: expected a whole number >= {minimum}")
    return value


def pop_halving(tokens: list[str]) -> tuple[Halving, list[str]]:
    """Take the scheduler options out of `key=value` tokens; UserError naming a bad value."""
    found: dict[str, str] = {}
    rest = []
    for token in tokens:
        key, _, text = token.partition("=")
        if key.strip() in ("scheduler", "scheduler.eta", "scheduler.min_iters"):
            found[key.strip()] = text.strip()
        else:
            rest.append(token)
    scheduler = found.get("scheduler", "none")
    check_choice("scheduler", scheduler, SCHEDULERS)
    eta = _whole("scheduler.eta", found["scheduler.eta"], 2) if "scheduler.eta" in found else 3
    min_iters = _whole("scheduler.min_iters", found["scheduler.min_iters"], 1) if "scheduler.min_iters" in found else None
    return Halving(scheduler, eta, min_iters), rest
