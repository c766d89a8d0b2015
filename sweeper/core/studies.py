"""Study files (`studies/*.yaml`) -> validated `Study` objects with stages and grids.

A study file holds a one-line `description`, `config` (training-config overrides for every trial),
`stages` (each a `name`, a `grid` of config key -> values crossed as a product, and optional `combos`,
labelled settings crossed with the grid, and optional `repeats`/`max_repeats`), optional `inputs` (config key
-> the study whose winner supplies it), `alternate: true` (each stage starts from the previous stage's winner;
`rounds=N` repeats the stages until the winner holds) and `repeats`/`max_repeats` for every stage (default 1:
each point trained once; `auto`: racing, up to `max_repeats`; see `sweeper.core.repeats`). Files are looked up in ./studies (only when this user owns it),
then $SWEEPER_STUDIES (os.pathsep-separated folders), then the studies/ folder shipped with the package.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainer.config import build_config, parse_value, resolve_key
from trainer.errors import UserError

BUILTIN = Path(__file__).resolve().parents[2] / "studies"
TOP_KEYS = {"description", "config", "stages", "inputs", "alternate", "repeats", "max_repeats"}
STAGE_KEYS = {"name", "grid", "combos", "repeats", "max_repeats"}
AUTO = "auto"  # repeats=auto: racing (`sweeper.analysis.racing`)
MAX_REPEATS = 5  # racing's default cap on a point's repeats
NAME = re.compile(r"^[A-Za-z0-9_]+$")


def label(value: Any) -> str:
    """A grid value as the string Optuna stores: 0.5 -> "0.5", inf -> "inf", 1.0 -> "1"."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return "inf" if math.isinf(value) else f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class Stage:
    name: str
    grid: dict[str, tuple[str, ...]]  # config key (or "combo") -> labels, the Optuna search space
    combos: dict[str, dict[str, Any]]  # combo label -> config overrides
    repeats: int | str = 1  # trainings per grid point (seeds seed+0..R-1), or "auto" (racing)
    max_repeats: int = MAX_REPEATS  # racing's cap

    def points(self) -> list[dict[str, str]]:
        """Every grid point, in a stable order."""
        keys = list(self.grid)
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*self.grid.values())]

    def overrides(self, point: dict[str, str]) -> dict[str, Any]:
        """The config overrides of one grid point (a combo expands to its settings)."""
        out: dict[str, Any] = {}
        for key, text in point.items():
            out.update(self.combos[text] if key == "combo" else {key: parse_value(text)})
        return out

    def searched_keys(self) -> set[str]:
        return {k for k in self.grid if k != "combo"} | {k for c in self.combos.values() for k in c}


@dataclass(frozen=True)
class Study:
    name: str
    description: str
    path: Path
    config: dict[str, Any]
    stages: tuple[Stage, ...]
    inputs: dict[str, str]  # config key -> study whose winner supplies it
    alternate: bool


def search_dirs() -> list[Path]:
    """./studies when this user owns it (a shared folder such as /tmp must not let others define our studies:
    a study sets what is trained and where), then $SWEEPER_STUDIES, then the built-in studies."""
    extra = [Path(p) for p in os.environ.get("SWEEPER_STUDIES", "").split(os.pathsep) if p]
    here = Path("studies")
    try:
        own = os.stat(here).st_uid == os.geteuid()
    except OSError:
        own = False
    return [*([here] if own else []), *extra, BUILTIN]


def available() -> dict[str, Path]:
    """Study name -> file; earlier folders shadow later ones, so a user file can replace a built-in study."""
    found: dict[str, Path] = {}
    for folder in search_dirs():
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            found.setdefault(path.stem, path)
    return found


def load(name: str) -> Study:
    if not NAME.match(name):
        raise UserError(f"study={name!r}: a study name is letters, digits and _ (see `sweeper studies`)")
    files = available()
    if name not in files:
        raise UserError(
            f"unknown study '{name}'; available: {', '.join(sorted(files)) or 'none'} (see `sweeper studies`)"
        )
    return parse_study(name, files[name])


def _config(where: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping of config keys to values")
    try:
        return {
            resolve_key(str(k)): parse_value(v) if isinstance(v, str) and k != "weights" else v for k, v in raw.items()
        }
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def check_repeats(where: str, repeats: Any, max_repeats: Any) -> tuple[int | str, int]:
    """`repeats` (a whole number >= 1, or auto) and `max_repeats` (>= 2) as given in a study file or on the
    command line; UserError naming `where` otherwise."""
    if repeats != AUTO and (isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1):
        raise UserError(
            f"{where}repeats={repeats!r}: expected a whole number >= 1 (trainings per grid point) or auto (racing)"
        )
    if isinstance(max_repeats, bool) or not isinstance(max_repeats, int) or max_repeats < 2:
        raise UserError(
            f"{where}max_repeats={max_repeats!r}: expected a whole number >= 2 (racing's most repeats per point)"
        )
    return repeats, max_repeats


def _stage(where: str, raw: Any, defaults: tuple[int | str, int]) -> Stage:
    if not isinstance(raw, dict) or set(raw) - STAGE_KEYS or "name" not in raw:
        raise UserError(
            f"{where}: a stage is a mapping with name, grid and optional combos, repeats, max_repeats (got {raw!r})"
        )
    name = str(raw["name"])
    if not NAME.match(name):
        raise UserError(f"{where}: stage name {name!r} must be letters, digits and _")
    grid = _config(f"{where} grid", raw.get("grid") or {})
    for key, values in grid.items():
        if not isinstance(values, list) or not values or len(set(map(label, values))) != len(values):
            raise UserError(f"{where} grid: {key} needs a list of distinct values (got {values!r})")
    combos_raw = raw.get("combos") or []
    if not isinstance(combos_raw, list):
        raise UserError(f"{where}: combos must be a list of config mappings")
    combos = {
        ",".join(f"{k}={label(v)}" for k, v in c.items()): c
        for c in (_config(f"{where} combos", c) for c in combos_raw)
    }
    if not grid and not combos:
        raise UserError(f"{where}: stage {name!r} has neither a grid nor combos")
    if "repeat" in grid:
        raise UserError(f"{where}: 'repeat' is not a grid key; give repeats: N to train every point N times")
    space = {k: tuple(label(v) for v in values) for k, values in grid.items()}
    repeats = check_repeats(f"{where}: ", raw.get("repeats", defaults[0]), raw.get("max_repeats", defaults[1]))
    return Stage(name, space | ({"combo": tuple(combos)} if combos else {}), combos, *repeats)


def parse_study(name: str, path: Path) -> Study:
    """Read and validate a study file: unknown keys, bad config keys or values -> one UserError naming the file."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read the study file ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict) or set(raw) - TOP_KEYS:
        extra = sorted(set(raw) - TOP_KEYS) if isinstance(raw, dict) else raw
        raise UserError(f"{path}: unknown key(s) {extra}; a study file has {', '.join(sorted(TOP_KEYS))}")
    description = raw.get("description")
    if not isinstance(description, str) or not description.strip() or "\n" in description.strip():
        raise UserError(f"{path}: description must be one line of text")
    if not isinstance(raw.get("stages"), list) or not raw["stages"]:
        raise UserError(f"{path}: stages must be a non-empty list")
    defaults = check_repeats(f"{path}: ", raw.get("repeats", 1), raw.get("max_repeats", MAX_REPEATS))
    stages = tuple(_stage(f"{path} stage {i + 1}", s, defaults) for i, s in enumerate(raw["stages"]))
    if len({s.name for s in stages}) != len(stages):
        raise UserError(f"{path}: stage names must be distinct")
    inputs = {resolve_key(str(k)): str(v) for k, v in (raw.get("inputs") or {}).items()}
    study = Study(
        name,
        description.strip(),
        path,
        _config(f"{path} config", raw.get("config") or {}),
        stages,
        inputs,
        bool(raw.get("alternate", False)),
    )
    for stage in stages:  # every grid point must make a valid config
        for point in stage.points():
            try:
                build_config({**study.config, **stage.overrides(point)})
            except UserError as e:
                raise UserError(f"{path} stage {stage.name}: {e}") from None
    return study


def list_studies() -> None:
    """Print each available study with its one-line description (and its file when not built in)."""
    files = available()
    width = max(map(len, files), default=0)
    for name, path in sorted(files.items()):
        study = parse_study(name, path)
        where = "" if path.parent.resolve() == BUILTIN else f"  [{path}]"
        print(f"{name:<{width}}  {study.description}{where}")
