"""`sweeper evaluate`: score bicubic upscaling, a generator checkpoint (or a snapshot a run kept), or a folder
of another method's SR images on benchmark sets, exactly as the trainer's validation scores.

Pairs come from `trainer.data.val_pairs` (HR cropped by `data.val_hr`, the set's supplied LR images where it
has them, else MATLAB's bicubic); PSNR/SSIM in both spaces with `upscale` border pixels removed (section 4.1)
and LPIPS (`metrics.lpips_net`, `metrics.lpips_version`) come from `trainer.metrics`. One CSV row per image
(`trainer.metrics.PER_IMAGE_COLUMNS`, LPIPS empty when its weights are missing) and a per-set mean table,
`metrics.space`'s columns first. A folder's method is logged to the `baselines` experiment, where
`sweeper report` finds it for Table 5.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint import load_generator, snapshot_path, snapshot_steps
from trainer.config import Config, build_config
from trainer.data import ValImage, lr_source, val_pairs
from trainer.errors import UserError
from trainer.files import write_text_atomic
from trainer.image_sets import image_files, resolve_root
from trainer.images import read_image, to_rgb
from trainer.imresize import imresize
from trainer.metrics import LPIPSMetric, per_image_csv, score
from trainer.scores import SCORES, set_means
from trainer.train import super_resolve

COLUMNS = ("set", "image", *SCORES, "lpips")
SOURCES = (
    "checkpoint",
    "iter",
    "folder",
    "method",
)  # evaluate's own keys; the others are sweeper options or config keys
PROTOCOL_KEYS = ("metrics.space", "metrics.lpips_net", "metrics.lpips_version", "data.val_hr")  # how images are scored


@dataclass
class Source:
    """What produces the SR images: "bicubic", a generator, or a folder of images named like the HR ones."""

    label: str
    generator: torch.nn.Module | None = None
    folder: Path | None = None


def protocol(config: dict[str, Any], upscale: int) -> Config:
    """The scoring settings (`PROTOCOL_KEYS`, defaults as in training) as a Config; other keys are refused."""
    other = sorted(set(config) - set(PROTOCOL_KEYS))
    if other:
        raise UserError(f"{other[0]}= does not change how images are scored; evaluate takes {', '.join(PROTOCOL_KEYS)}")
    return build_config({**config, "upscale": upscale})


def checkpoint_file(checkpoint: str, iteration: int | None) -> Path:
    """The generator file for `checkpoint=` (a .pt file or a trial folder) at `iter=` (a kept snapshot; None: final)."""
    path = Path(checkpoint).expanduser()
    run_dir = path if path.is_dir() else path.parent.parent  # <trial>/ckpt/last.pt
    if iteration is None:
        file = run_dir / "ckpt" / "last.pt" if path.is_dir() else path
    else:
        file = snapshot_path(run_dir, iteration)
        if not file.is_file():
            kept = snapshot_steps(run_dir)
            listed = f"kept: {', '.join(map(str, kept))}" if kept else "it kept none: train with train.keep_every=N"
            raise UserError(f"iter={iteration}: no generator kept at that iteration in {run_dir} ({listed})")
    if not file.is_file():
        raise UserError(f"checkpoint={checkpoint}: no such checkpoint file or trial folder (e.g. <trial>/ckpt/last.pt)")
    return file


def source(
    method: str | None, checkpoint: str | None, iteration: int | None, folder: str | None, device: torch.device
) -> Source:
    """The one SR source the arguments name, or a UserError saying how to name one."""
    named = [x for x in (method if not folder else None, checkpoint, folder) if x]
    if len(named) != 1:
        raise UserError(
            "evaluate one source: bicubic, a checkpoint (PATH or checkpoint=PATH [iter=N]), or folder=DIR method=NAME"
        )
    if iteration is not None and (folder or method == "bicubic"):
        raise UserError("iter= picks a kept generator of a checkpoint: give checkpoint=<trial folder or .pt> with it")
    if folder:
        if not method or method == "bicubic":
            raise UserError(
                f"folder={folder}: name the method whose images these are with method=NAME (e.g. method=ESRGAN)"
            )
        if not Path(folder).expanduser().is_dir():
            raise UserError(f"folder={folder}: not a folder of SR images")
        return Source(method, folder=Path(folder).expanduser())
    if method == "bicubic":
        return Source("bicubic")
    path = checkpoint or method or ""
    if not checkpoint and not Path(path).is_file():
        raise UserError(
            f"method={method!r}: choose bicubic, a generator checkpoint file (e.g. run/ckpt/last.pt), or folder=DIR method=NAME"
        )
    file = checkpoint_file(path, iteration)
    return Source(str(file), generator=load_generator(file).to(device))


def folder_images(src: Source, set_name: str, pairs: list[ValImage], single_set: bool) -> dict[str, torch.Tensor]:
    """The folder's SR image for each HR image of the set, matched by file name (extension aside): from
    `<folder>/<set>/`, or `<folder>/` itself when one set is scored. One-line errors for missing, extra
    and mis-sized images."""
    assert src.folder is not None
    folder = src.folder / set_name if (src.folder / set_name).is_dir() else src.folder
    if folder == src.folder and not single_set:
        raise UserError(
            f"folder={src.folder}: no sub-folder {set_name}/; with several sets give one sub-folder per set"
        )
    files = {p.stem: p for p in image_files(folder)}
    wanted = {Path(p.name).stem: p for p in pairs}
    if missing := sorted(wanted.keys() - files.keys()):
        raise UserError(
            f"{folder}: {len(missing)} image(s) of {set_name} missing ({', '.join(missing[:3])}); name each SR image like its HR file"
        )
    if extra := sorted(files.keys() - wanted.keys()):
        raise UserError(
            f"{folder}: {len(extra)} image(s) match no HR image of {set_name} ({', '.join(extra[:3])}); remove them or score the set they belong to"
        )
    out = {}
    for stem, pair in wanted.items():
        img = read_image(files[stem])
        if img.shape[-2:] != pair.hr.shape[-2:]:
            raise UserError(
                f"{files[stem]}: {tuple(img.shape[-2:])}, but its HR is {tuple(pair.hr.shape[-2:])} after data.val_hr; "
                "SR images must be the HR size (try data.val_hr=mod4 or mod12, whichever the method's HR used)"
            )
        out[pair.name] = to_rgb(img).unsqueeze(0).float().div(255)
    return out


def evaluate(
    method: str,
    root: Path,
    sets: list[str],
    upscale: int,
    use_lpips: bool,
    *,
    config: dict[str, Any] | None = None,
    checkpoint: str | None = None,
    iteration: int | None = None,
    folder: str | None = None,
) -> list[dict]:
    """One row dict per image of each set (`COLUMNS`): `method` is bicubic or a checkpoint file, or the label of
    `folder`'s images; `config` holds `PROTOCOL_KEYS` settings."""
    cfg = protocol(config or {}, upscale)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    src = source(method, checkpoint, iteration, folder, device)
    m = cfg.metrics
    lpips = LPIPSMetric(device, m.lpips_net, m.lpips_version) if use_lpips else None
    rows = []
    for set_name in sets:
        pairs = val_pairs(root, set_name, upscale, cfg.data.val_hr)
        given = folder_images(src, set_name, pairs, len(sets) == 1) if src.folder else {}
        for pair in pairs:
            if src.folder:
                sr = given[pair.name]
            elif src.generator is None:  # bicubic, in uint8 as MATLAB does
                sr = imresize(pair.lr, upscale).unsqueeze(0).float().div(255)
            else:
                sr = super_resolve(src.generator, pair.lr, device)
                if sr.shape[-2:] != pair.hr.shape[-2:]:
                    raise UserError(
                        f"{method}: turns a {tuple(pair.lr.shape[-2:])} LR image into {tuple(sr.shape[-2:])}, "
                        f"not {tuple(pair.hr.shape[-2:])}; pass the checkpoint's factor as --upscale"
                    )
            hr = to_rgb(pair.hr).unsqueeze(0).float().div(255).to(device)
            lp = float(lpips(sr.to(device), hr)[0]) if lpips and lpips.available else None
            rows.append(
                {
                    "set": set_name,
                    "image": pair.name,
                    **score(sr[0], pair.hr, upscale),
                    "lpips": lp,
                    "lr": lr_source(pairs),
                }
            )
    return rows


def by_set(rows: list[dict]) -> dict[str, dict[str, dict[str, Any]]]:
    """Rows as `{set: {image: values}}`, the trainer's `per_image` shape."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["set"], {})[r["image"]] = {k: r[k] for k in COLUMNS[2:]}
    return out


def mean_table(rows: list[dict], sets: list[str], space: str, lpips_label: str) -> str:
    """Per-set means, `space`'s PSNR/SSIM first, then the other space's, then LPIPS."""
    other = "y" if space == "rgb" else "rgb"
    keys = [f"psnr_{space}", f"ssim_{space}", f"psnr_{other}", f"ssim_{other}"]
    heads = [k.replace("_", "-").upper() for k in keys]
    lines = [f"{'set':<10} {'images':>6} " + " ".join(f"{h:>9}" for h in heads) + f" {lpips_label:>13}  LR"]
    grouped = by_set(rows)
    for s in sets:
        means = set_means(grouped[s].values(), space)
        lp = f"{means['lpips']:13.4f}" if means["lpips"] is not None else f"{'n/a':>13}"
        lr = next(r["lr"] for r in rows if r["set"] == s)
        lines.append(f"{s:<10} {len(grouped[s]):>6} " + " ".join(f"{means[k]:9.4f}" for k in keys) + f" {lp}  {lr}")
    return "\n".join(lines)


def log_baseline(tokens: list[str], label: str, folder: Path, rows: list[dict], sets: list[str], cfg: Config) -> str:
    """Log a folder's scores as a run of the `baselines` experiment (tags `sweeper.baseline=true`,
    `sweeper.method`, `sweeper.label`, `sweeper.eval`), replacing an earlier run of the same method and
    protocol; returns the run id."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from sweeper.core.mlflow_names import BASELINES, experiment, git_commit, metric_tags
    from sweeper.core.overrides import parse
    from sweeper.core.workspace import Workspace

    opts = parse(tokens, allow_config=False)
    ws = Workspace.resolve(opts.workspace, opts.storage, opts.tracking_uri)
    if opts.tracking_uri is None:  # the workspace's own SQLite store
        ws.root.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(ws.tracking_uri)
    exp_id = experiment(client, BASELINES, ws.artifacts_dir)
    key = eval_key(cfg, sets)
    for old in client.search_runs([exp_id], f"tags.`sweeper.method` = '{label}' and tags.`sweeper.eval` = '{key}'"):
        client.delete_run(old.info.run_id)
    m = cfg.metrics
    tags = {
        "sweeper.kind": "baseline",
        "sweeper.baseline": "true",
        "sweeper.method": label,
        "sweeper.label": label,
        "sweeper.eval": key,
        "sweeper.weights": "n/a",
        "sweeper.lpips": "imagenet" if any(r["lpips"] is not None for r in rows) else "unavailable",
        **metric_tags(
            {"space": m.space, "lpips_net": m.lpips_net, "lpips_version": m.lpips_version, "val_hr": cfg.data.val_hr}
        ),
        "sweeper.git_commit": git_commit(),
    }
    run_id = client.create_run(exp_id, run_name=label, tags=tags).info.run_id
    params = {
        "folder": str(folder.resolve()),
        "metrics.space": m.space,
        "metrics.lpips_net": m.lpips_net,
        "metrics.lpips_version": m.lpips_version,
        "data.val_hr": cfg.data.val_hr,
        "upscale": cfg.upscale,
    }
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"{s}/{k}", float(v), now, 0)
        for s, images in by_set(rows).items()
        for k, v in set_means(images.values(), m.space).items()
        if v is not None
    ]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
    client.log_text(run_id, per_image_csv(by_set(rows)), "per_image.csv")
    client.set_terminated(run_id)
    return run_id


def eval_key(cfg: Config, sets: list[str]) -> str:
    """What a baseline's scores depend on besides its images: factor, data root, sets and HR crop."""
    return f"x{cfg.upscale} root={cfg.data.root or 'default'} sets={'+'.join(sets)} hr={cfg.data.val_hr}"


def main(tokens: list[str], data_root: Path | None, sets: str, out: Path | None, upscale: int, use_lpips: bool) -> None:
    """The `sweeper evaluate` command: `tokens` are METHOD and key=value settings."""
    from sweeper.core.overrides import parse

    if upscale not in (2, 3, 4):
        raise UserError(f"--upscale={upscale} is not supported; choose 2, 3 or 4")
    names = [s.strip() for s in sets.split(",") if s.strip()]
    if not names:
        raise UserError(f"--sets={sets!r}: give comma-separated set names, e.g. Set5,Set14,BSD100")
    positional = [t for t in tokens if "=" not in t]
    if len(positional) > 1:
        raise UserError(f"one method at a time: got {', '.join(positional)}")
    own = {k: v for k, _, v in (t.partition("=") for t in tokens if "=" in t) if k in SOURCES}
    rest = [t for t in tokens if "=" in t and t.partition("=")[0] not in SOURCES]
    opts = parse(rest)
    method = own.get("method") or (positional[0] if positional else None)
    if positional and own.get("method"):
        raise UserError(f"{positional[0]} and method={own['method']}: name the method once")
    iteration = own.get("iter")
    if iteration is not None and not iteration.isdigit():
        raise UserError(f"iter={iteration!r}: expected a GAN iteration whose generator was kept (train.keep_every)")
    root = resolve_root(data_root)
    cfg = protocol(opts.config, upscale)
    rows = evaluate(
        method or "",
        root,
        names,
        upscale,
        use_lpips,
        config=opts.config,
        checkpoint=own.get("checkpoint"),
        iteration=int(iteration) if iteration else None,
        folder=own.get("folder"),
    )
    if out is not None:
        write_text_atomic(Path(out), per_image_csv(by_set(rows)))
    m = cfg.metrics
    label = (
        method
        if own.get("folder") or not own.get("checkpoint")
        else own["checkpoint"] + (f" iter={iteration}" if iteration else "")
    )
    print(
        f"{label} x{upscale} on {root}: HR {cfg.data.val_hr}, PSNR/SSIM on {m.space.upper()} first (border {upscale})"
    )
    print(mean_table(rows, names, m.space, f"LPIPS-{m.lpips_net}{m.lpips_version}"))
    if out is not None:
        print(f"per-image results: {out}")
    if own.get("folder"):
        run_id = log_baseline(rest, method or "", Path(own["folder"]).expanduser(), rows, names, cfg)
        print(f"logged to MLflow experiment baselines (run {run_id}): `sweeper report` shows {method} in Table 5")
