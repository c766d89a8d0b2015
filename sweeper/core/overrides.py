"""Command-line `key=value` tokens -> sweeper options + validated training-config overrides.

Sweeper options (`study=`, `executor=`, `executor.n_jobs=`, `select_by=`, ...) steer the orchestration;
every other key must be a training-config key (`train.iters=2000`, `mu=inf`, `data.root=/data`), checked
against `trainer.config` so a typo fails before anything runs. Values parse like YAML: `[a, b]` is a list,
`inf` is infinity.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sweeper.core.selection import TIE_BREAKS, Rule, parse_select_by
from sweeper.core.studies import AUTO, MAX_REPEATS, Stage, check_repeats
from trainer.config import (
    ALIASES,
    PRESETS,
    all_keys,
    check_choice,
    parse_value,
    resolve_key,
)
from trainer.errors import UserError

OPTION_KEYS = ("study", "stage", "trial", "executor", "select_by", "storage", "tracking_uri", "workspace", "rounds", "max_retries",
               "scheduler", "scheduler.eta", "scheduler.min_iters", "repeats", "max_repeats", "max_trainings", "select.min_effect",
               "select.tie_break", "select.alpha", "max_machine_faults", "retry_failed")  # fmt: skip
SCHEDULERS = ("none", "sha")
RUN_KEYS = ("executor", "rounds", "max_retries", "max_machine_faults", "retry_failed", "scheduler", "scheduler.eta",
            "scheduler.min_iters", "repeats", "max_repeats", "max_trainings")  # fmt: skip
JUDGE_KEYS = ("select_by", "select.min_effect", "select.tie_break", "select.alpha")  # a stage's verdict


@dataclass
class Options:
    study: str | None = None
    stage: str | None = None
    trial: int | None = None
    executor: str = "local"
    executor_options: dict[str, Any] = field(default_factory=dict)
    stall_s: float | None = None  # executor.stall_s: a running trial silent this long is killed; None: the default rule
    select_by: str | None = (
        None  # the first selection metric; None: the preset's default (lpips; psnr for preset=smoke)
    )
    select_then: tuple[str, ...] = ()  # later metrics, consulted among ties (select_by=lpips,psnr)
    min_effect: float = 0.0  # select.min_effect, in units of the first metric
    tie_break: str = "best_mean"  # select.tie_break
    alpha: float = 0.05  # select.alpha: the intervals are 1 - alpha
    storage: str | None = None
    tracking_uri: str | None = None
    workspace: str | None = None
    rounds: int | None = None  # None: the study's own
    max_retries: int = 2
    max_machine_faults: int = 3  # attempts ended in a row by the machine's faults before no new one is launched
    retry_failed: bool = False  # re-open grid points that used up their retries
    scheduler: str = "none"  # "sha": successive halving over each stage's grid (sweeper.halving)
    eta: int = 3  # scheduler.eta
    min_iters: int | None = None  # scheduler.min_iters; None: from sweeper.halving.rung_budgets
    repeats: int | str | None = None  # trainings per grid point, or "auto" (racing); None: the study's (default 1)
    max_repeats: int | None = None  # racing's cap; None: the study's (default studies.MAX_REPEATS)
    max_trainings: int | None = None  # racing's budget per stage, trainings over all rounds; None: no budget
    config: dict[str, Any] = field(default_factory=dict)  # dotted training-config key -> parsed value

    def rule(self, select_by: str) -> Rule:
        """The selection rule with `select_by` (the resolved first metric) first."""
        then = tuple(m for m in self.select_then if m != select_by)
        return Rule((select_by, *then), self.min_effect, self.tie_break, self.alpha)

    @property
    def preset(self) -> str:
        return str(self.config.get("preset", "paper"))

    @property
    def where(self) -> str:
        """The workspace=, storage= and tracking_uri= given, as ` key=value` tokens: a suggested command
        carries them so that it works as printed."""
        given = {"workspace": self.workspace, "storage": self.storage, "tracking_uri": self.tracking_uri}
        return "".join(f" {k}={v}" for k, v in given.items() if v)


def _count(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{key}={value!r}: expected a whole number >= {minimum}")
    return value


def _unknown_key(key: str) -> UserError:
    valid = [*OPTION_KEYS, *ALIASES, *all_keys()]
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = (
        f"did you mean {', '.join(close)}?"
        if close
        else f"sweeper options: {', '.join(OPTION_KEYS)}, or a config key like train.iters"
    )
    return UserError(f"unknown key '{key}'; {hint}")


def parse(tokens: list[str], allow_config: bool = True, recorded: bool = False, uses: tuple[str, ...] = ()) -> Options:
    """Parse `key=value` tokens; UserError on a token without '=', a repeated or unknown key, or a bad value.
    `recorded`: for a command that reads what runs recorded (status, report, ...), which refuses the keys that
    steer a run (`RUN_KEYS`, `executor.*`) and those that judge it (`JUDGE_KEYS`, but the ones it `uses`)
    rather than ignore them."""
    return options(split(tokens), allow_config, recorded, uses)


def split(tokens: list[str]) -> dict[str, str]:
    """`key=value` tokens -> {key: value text}; UserError on a token without '=' or a key given twice."""
    settings: dict[str, str] = {}
    for token in tokens:
        key, sep, text = token.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"'{token}' is not a key=value setting (e.g. study=mu_search or train.iters=2000)")
        if key in settings:
            raise UserError(f"{key}= is given twice; keep one")
        settings[key] = text
    return settings


def options(
    settings: Mapping[str, Any], allow_config: bool = True, recorded: bool = False, uses: tuple[str, ...] = ()
) -> Options:
    """Options from `{key: value}`: a str value reads as on the command line (YAML, `inf`), any other value
    (from the Python API) is taken as it is; UserError on an unknown key or a bad value (`recorded`: `parse`)."""
    opts = Options()
    for key, raw in settings.items():
        if recorded and (why := refused(key, uses)):
            raise UserError(why)
        text = raw if isinstance(raw, str) else str(raw)
        value = parse_value(raw) if isinstance(raw, str) else raw
        if key == "executor.stall_s":  # the orchestrator's, for every executor
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise UserError(f"executor.stall_s={text}: expected seconds >= 0 (0 turns the stall watchdog off)")
            opts.stall_s = float(value)
        elif key.startswith("executor."):
            opts.executor_options[key.removeprefix("executor.")] = value
        elif key in ("trial", "rounds", "max_retries", "max_machine_faults", "max_trainings"):
            setattr(opts, key, _count(key, value, 0 if key in ("trial", "max_retries") else 1))
        elif key == "retry_failed":
            if not isinstance(value, bool):
                raise UserError(f"retry_failed={text!r}: expected true or false")
            opts.retry_failed = value
        elif key == "scheduler":
            if value not in SCHEDULERS:
                raise UserError(f"scheduler={text!r} is not valid; choose one of {', '.join(SCHEDULERS)}")
            opts.scheduler = value
        elif key in ("scheduler.eta", "scheduler.min_iters"):
            field_name = key.removeprefix("scheduler.")
            setattr(opts, field_name, _count(key, value, 2 if field_name == "eta" else 1))
        elif key in ("repeats", "max_repeats"):
            check_repeats("", value if key == "repeats" else AUTO, value if key == "max_repeats" else MAX_REPEATS)
            setattr(opts, key, value)
        elif key == "select_by":
            opts.select_by, *then = parse_select_by(text)
            opts.select_then = tuple(then)
        elif key == "select.tie_break":
            if value not in TIE_BREAKS:
                raise UserError(f"select.tie_break={text!r} is not valid; choose one of {', '.join(TIE_BREAKS)}")
            opts.tie_break = value
        elif key in ("select.min_effect", "select.alpha"):
            alpha = key == "select.alpha"
            number = not isinstance(value, bool) and isinstance(value, (int, float)) and value == value
            if not number or (not 0 < value < 0.5 if alpha else not 0 <= value < float("inf")):
                expected = (
                    "a number between 0 and 0.5 (0.05: 95 % intervals)"
                    if alpha
                    else "a number >= 0, in the first metric's units"
                )
                raise UserError(f"{key}={text!r}: expected {expected}")
            setattr(opts, "min_effect" if key == "select.min_effect" else "alpha", float(value))
        elif key in OPTION_KEYS:
            if not text.strip():
                raise UserError(f"{key}= needs a value")
            setattr(opts, key, text.strip())
        else:
            try:
                dotted = resolve_key(key)
            except UserError:
                raise _unknown_key(key) from None
            if not allow_config:
                takes = [k for k in OPTION_KEYS if not (recorded and refused(k, uses))]
                raise UserError(f"{key}= is a training setting; this command takes only {', '.join(takes)}")
            if dotted == "preset":  # named before anything looks for weights or data
                check_choice("preset", value, PRESETS)
            opts.config[dotted] = text if dotted == "weights" else value
    return opts


def refused(key: str, uses: tuple[str, ...]) -> str | None:
    """Why a command that reads what runs recorded refuses `key` (one that steers or judges a run and that the
    command does not `use`); None when it takes it."""
    if key in RUN_KEYS or key.startswith("executor."):
        return (
            f"{key}= steers how a study runs (give it to `sweeper run`); this command reads what the runs "
            "recorded, where it would change nothing"
        )
    if key in JUDGE_KEYS and key not in uses:
        return (
            f"{key}= decides a stage's winner: `sweeper run` with it judges the trained trials again (no "
            "training); this command shows the verdict the run recorded"
        )
    return None


def stage_repeats(opts: Options, stage: Stage) -> tuple[int | str, int]:
    """(repeats, max_repeats) of a stage: the command line's, else the study file's."""
    repeats = stage.repeats if opts.repeats is None else opts.repeats
    if repeats == AUTO and opts.scheduler != "none":
        raise UserError(
            f"stage {stage.name} races (repeats: auto) and scheduler={opts.scheduler} halves; they do not combine: pass repeats=N or scheduler=none"
        )
    return repeats, stage.max_repeats if opts.max_repeats is None else opts.max_repeats


def check_max_trainings(opts: Options, stages: Sequence[Stage]) -> None:
    """`max_trainings=N` caps every racing stage: one must race, and N must pay for its first round (one seed of
    every point); UserError otherwise."""
    if opts.max_trainings is None:
        return
    racing = [s for s in stages if stage_repeats(opts, s)[0] == AUTO]
    if not racing:
        raise UserError(f"max_trainings={opts.max_trainings} caps racing, and no stage races: pass repeats=auto too")
    for stage in racing:
        if opts.max_trainings < len(stage.points()):
            raise UserError(
                f"max_trainings={opts.max_trainings} is fewer than stage {stage.name}'s {len(stage.points())} points: "
                f"racing's first round trains one seed of each; pass max_trainings >= {len(stage.points())}"
            )


V = TypeVar("V")


def flag_or_key(flag: str, given: V | None, key: str, value: V | None, what: str) -> V | None:
    """What a command's option `flag` gives (`--from`), else its `key=` (`study=`, as the other commands take it);
    UserError when the two name different ones (`what`: the plural of what they name)."""
    if value is not None and given not in (None, value):
        raise UserError(f"{key}={value} and {flag} {given} name two {what}; give one of them")
    return value if given is None else given


def require_study(opts: Options) -> str:
    if not opts.study:
        raise UserError("which study? add study=NAME (list them with `sweeper studies`)")
    return opts.study
