"""Which generator of each trial a report shows (`sweeper report checkpoint=final|best|N`): the final iterate
(the default), the snapshot a run kept at iteration N (`train.keep_every`), or per trial the kept snapshot
that scores best by the selection metric on a held-out set (`holdout=SET`), never on a set the tables report.

Trials validate on `data.val_sets` while training, and those are the sets the report's tables show (the
benchmark test sets): selecting a checkpoint on them would select on the test set, so `best` refuses
without a held-out set outside them. This module only decides (pure functions); `report` scores the
snapshots with `evaluate` and logs each score once to MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sweeper.core.selection import METRICS, signed
from trainer.errors import UserError

FINAL, BEST = "final", "best"


@dataclass(frozen=True)
class Choice:
    """`kind` final | best | iter; `iteration` for iter; `holdout` sets and `select_by` metric for best."""

    kind: str = FINAL
    iteration: int | None = None
    holdout: tuple[str, ...] = ()
    select_by: str | None = None

    def describe(self) -> str:
        """The provenance words: `checkpoint=50000` or `checkpoint=best by lpips on held-out DIV2K_val`."""
        if self.kind == BEST:
            return f"checkpoint=best by {self.select_by} on held-out {'+'.join(self.holdout)}"
        return f"checkpoint={self.iteration if self.kind == 'iter' else FINAL}"


FINAL_CHOICE = Choice()  # the default: every row at the final iterate


def parse(checkpoint: str | int | None, holdout: str | Sequence[str] | None) -> Choice:
    """`checkpoint=` and `holdout=` (comma-separated set names) as a Choice (its metric is set by `with_metric`);
    one-line UserErrors for a bad value or a holdout without `best`."""
    text = FINAL if checkpoint is None else str(checkpoint).strip()
    sets = tuple(s.strip() for s in (holdout.split(",") if isinstance(holdout, str) else holdout or ()) if s.strip())
    if text not in (FINAL, BEST) and not (text.isdigit() and int(text) > 0):
        raise UserError(
            f"checkpoint={text!r}: choose final, best, or an iteration kept by train.keep_every (e.g. checkpoint=50000)"
        )
    if sets and text != BEST:
        raise UserError(f"holdout={','.join(sets)} selects checkpoint=best only; add checkpoint=best or drop holdout=")
    if text.isdigit():
        return Choice("iter", int(text))
    return Choice(text, holdout=sets)


def check_holdout(choice: Choice, tested: Sequence[str]) -> None:
    """Refuse `best` without a held-out set, or with one the tables report (`tested`: the runs' data.val_sets)."""
    if choice.kind != BEST:
        return
    if not choice.holdout:
        raise UserError(
            f"checkpoint=best: the runs validated on {', '.join(tested)}, the test sets the tables report, so choosing "
            "on them would select on the test set; name a held-out set with holdout=SET (a set folder of the data root "
            "outside data.val_sets)"
        )
    if clash := [s for s in choice.holdout if s in tested]:
        raise UserError(
            f"holdout={','.join(choice.holdout)}: {clash[0]} is a test set the tables report (data.val_sets: "
            f"{', '.join(tested)}); choose a set folder of the data root outside them"
        )


def with_metric(choice: Choice, select_by: str) -> Choice:
    """`choice` selecting by `select_by` (psnr | ssim | lpips), checked."""
    if select_by not in METRICS:
        raise UserError(f"select_by={select_by!r}: choose one of {', '.join(METRICS)}")
    return Choice(choice.kind, choice.iteration, choice.holdout, select_by)


def best_iteration(scores: Mapping[int, float | None], metric: str, trial: str) -> int:
    """The kept iteration whose held-out score of `metric` is best (higher PSNR/SSIM, lower LPIPS; the earliest
    among equals); UserError when nothing was kept or the metric was not measured."""
    if not scores:
        raise UserError(f"checkpoint=best: {trial} kept no snapshots; train with train.keep_every=N to keep some")
    if any(v is None for v in scores.values()):
        raise UserError(
            f"checkpoint=best: {metric} was not measured on the held-out set for {trial} (LPIPS unavailable?); "
            "choose with select_by=psnr or import the LPIPS weights (`sweeper weights status`)"
        )
    return min(sorted(scores), key=lambda step: signed(metric, scores[step]))


def fixed_iteration(iteration: int, kept: Sequence[int], trial: str) -> int:
    """`iteration` when the trial kept it, else a UserError listing the iterations it kept."""
    if iteration not in kept:
        listed = f"kept: {', '.join(map(str, kept))}" if kept else "it kept none: train with train.keep_every=N"
        raise UserError(f"checkpoint={iteration}: {trial} kept no generator at iteration {iteration} ({listed})")
    return iteration
