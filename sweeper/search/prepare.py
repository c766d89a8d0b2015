"""`sweeper data prepare`: build the prepared-data cache of training sets ahead of the trials that need it."""

from __future__ import annotations

import sys
from pathlib import Path

from sweeper.core.overrides import parse
from sweeper.core.workspace import Workspace
from trainer.config import build_config
from trainer.data import prepare_set
from trainer.errors import UserError
from trainer.image_sets import settle_sets


def main(tokens: list[str], data_root: Path | None, sets: str | None, workers: int | None) -> None:
    """Prepare each set (default: the config's `data.train_sets`) and print one line per set:
    `<set>: <N> sub-images of <size> (step <step>) from <M> images`; where it lives goes to stderr."""
    opts = parse(tokens)
    if opts.study or opts.trial is not None:
        raise UserError(
            "sweeper data prepare takes data settings (preset=, upscale=, data.*) and workspace=; not study= or trial="
        )
    if workers is not None and workers < 1:
        raise UserError(f"--workers={workers}: give a number of processes >= 1 (default: every core)")
    config = {**opts.config, **({"data.root": str(data_root)} if data_root else {})}
    cfg = build_config(settle_sets(config) if sets is None else config)
    names = [s.strip() for s in sets.split(",") if s.strip()] if sets is not None else cfg.data.train_sets
    if not names:
        raise UserError(f"--sets={sets!r}: give comma-separated set names, e.g. DIV2K or DIV2K,Flickr2K")
    cache_dir = Workspace.resolve(opts.workspace).cache_dir
    for name in names:
        prepared = prepare_set(cfg, name, cache_dir, workers, show=True)
        m, d = prepared.manifest, cfg.data
        print(
            f"{name}: {m['subimages']} sub-images of {d.subimage_size}x{d.subimage_size} (step {d.subimage_step}) "
            f"from {m['images']} images",
            flush=True,
        )
        how = f"prepared now: {prepared.built} images in this run" if prepared.built else "already prepared"
        print(
            f"  {prepared.folder} ({m['bytes'] / 1e9:.2f} GB; {how}; content hash {m['content_hash']})", file=sys.stderr
        )
