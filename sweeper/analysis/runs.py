"""Read runs back from MLflow in the layout of docs/ARCHITECTURE.md ("MLflow layout").

Only report, correlate and promote read MLflow; they all go through `find_runs`, so the layout is
interpreted in one place: tags `sweeper.*`, params `mu`/`beta`/`arch`, metrics `<Set>/<metric>` and
`mean/<metric>`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from sweeper.core.mlflow_names import BASELINES
from sweeper.core.overrides import Options
from sweeper.core.selection import HIGHER_IS_BETTER, METRICS  # noqa: F401 (re-exported for the report modules)
from sweeper.core.workspace import Workspace, sqlite_path
from trainer.errors import UserError

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per config.yaml read is noise

LABELS = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS"}


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run, reduced to what the readers need. Its setting (mu, beta) is read from the params once,
    here, with the labels and the row order the paper's tables use, so that the report only arranges records."""

    run_id: str
    name: str
    experiment: str
    status: str  # MLflow run status: FINISHED, FAILED, RUNNING, KILLED
    start_time: int  # ms since the epoch
    end_time: int | None
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]  # latest value of each metric
    mu: float = field(init=False)  # inf for the VGG-only loss, NaN when the run has no mu param
    beta: str = field(init=False)
    mu_label: str = field(init=False)  # `mu=inf` or `mu=0.5` (1.0 as `mu=1`)
    setting: str = field(init=False)  # `mu=inf` (VGG loss only, beta unused) or `mu=0.5 + beta3_6` (Table 4)
    order: tuple[float, str] = field(init=False)  # the paper's row order: mu=inf first, then increasing mu, then beta

    def __post_init__(self) -> None:
        mu, beta = float(self.params.get("mu", "nan")), self.params.get("beta", "")
        label = f"mu={mu:g}"
        fields = {"mu": mu, "beta": beta, "mu_label": label, "setting": label if math.isinf(mu) else f"{label} + {beta}",
                  "order": (-math.inf if math.isinf(mu) else mu, beta)}  # fmt: skip
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    @property
    def stage(self) -> str:
        return self.tags.get("sweeper.stage", "")

    @property
    def stopped_at(self) -> int | None:
        """The GAN iteration successive halving stopped this trial at (its metrics are from there); None when it
        trained to the end."""
        value = self.tags.get("sweeper.stopped_at")
        return int(value) if value else None

    @property
    def arch(self) -> str:
        return self.params.get("arch", "")

    def sets(self) -> list[str]:
        """Validation sets with a final metric, alphabetically."""
        return sorted(
            {k.split("/")[0] for k in self.metrics if k.count("/") == 1 and k.split("/")[1] in METRICS} - {"mean"}
        )

    def value(self, set_name: str, metric: str) -> float:
        """Final `<set>/<metric>` (set "mean" = average over sets); NaN when missing (e.g. LPIPS unavailable)."""
        return self.metrics.get(f"{set_name}/{metric}", math.nan)


def open_client(opts: Options) -> MlflowClient:
    """The tracking store of the workspace (or `tracking_uri=`); UserError when a SQLite store does not exist."""
    uri = Workspace.resolve(opts.workspace, opts.storage, opts.tracking_uri).tracking_uri
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        raise UserError(f"no tracking store at {db}: run a study first, or point workspace= or tracking_uri= at one")
    return MlflowClient(tracking_uri=uri)


def experiment_ids(client: MlflowClient, study: str | None) -> list[str]:
    """The experiment of `study` (None = every experiment); UserError naming the known studies if absent."""
    experiments = client.search_experiments()
    if study is None:
        return [e.experiment_id for e in experiments]
    for e in experiments:
        if e.name == study:
            return [e.experiment_id]
    known = ", ".join(sorted(e.name for e in experiments if e.name not in ("Default", BASELINES))) or "none yet"
    raise UserError(f"study={study!r} has no runs in the tracking store; studies with runs: {known}")


def find_runs(client: MlflowClient, kind: str | None, study: str | None = None, **tags: str) -> list[RunRecord]:
    """Runs of `study` (None = all) tagged `sweeper.kind=kind` (None = any) and `sweeper.<key>=value` for
    each keyword, oldest first."""
    names = {e.experiment_id: e.name for e in client.search_experiments()}
    tags = {"kind": kind, **tags} if kind else tags
    clauses = [f"tags.`sweeper.{k}` = '{v}'" for k, v in tags.items()]
    out: list[RunRecord] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids(client, study),
            filter_string=" and ".join(clauses),
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        out += [
            RunRecord(
                run_id=r.info.run_id,
                name=r.info.run_name or "",
                experiment=names.get(r.info.experiment_id, ""),
                status=r.info.status,
                start_time=r.info.start_time or 0,
                end_time=r.info.end_time,
                tags=dict(r.data.tags),
                params=dict(r.data.params),
                metrics=dict(r.data.metrics),
            )
            for r in page
        ]
        token = page.token
        if not token:
            return out


def finished(runs: list[RunRecord]) -> list[RunRecord]:
    """The runs that trained to their end: FINISHED, and not stopped early by successive halving."""
    return [r for r in runs if r.status == "FINISHED" and r.stopped_at is None]


def stopped_early(runs: list[RunRecord]) -> list[RunRecord]:
    """The trials successive halving stopped at a rung (`sweeper.stopped_at`): shown in the tables, never ranked."""
    return [r for r in runs if r.status == "FINISHED" and r.stopped_at is not None]


def read_artifact(client: MlflowClient, run_id: str, name: str) -> dict:
    """A JSON or YAML mapping logged as an artifact of the run; {} when it is missing or not a mapping."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, name, tmp)
        except (MlflowException, OSError):
            return {}
        text = Path(path).read_text()
        loaded = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
    return loaded if isinstance(loaded, dict) else {}
