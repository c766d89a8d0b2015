"""The `sweeper` command line. Each command is a thin wrapper: it imports the module that owns the work
lazily (so `sweeper --help` does not import torch or MLflow) and turns a UserError or a fault of the machine
found by a check (`trainer.errors.MachineFault`: a full disk) into one line. A hang-up (SIGHUP: the terminal
or SSH session went away) stops `sweeper run` as Ctrl-C does."""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from trainer.errors import MachineFault, UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Reproduce the Dual Perceptual loss paper's hyperparameter search: run studies, inspect, report, promote.",
)
weights_app = typer.Typer(no_args_is_help=True, help="ImageNet weights for VGG19, ResNet-50 and AlexNet (LPIPS).")
app.add_typer(weights_app, name="weights")
data_app = typer.Typer(no_args_is_help=True, help="Training data: the prepared cache of sub-images and their LR.")
app.add_typer(data_app, name="data")
figure_app = typer.Typer(
    no_args_is_help=True, help="The paper's figures that need images: Fig. 4's feature maps, Figs. 6-10's zoomed crops."
)
app.add_typer(figure_app, name="figure")

Overrides = Annotated[
    list[str] | None, typer.Argument(help="key=value settings (study=, preset=, any config key); see the example below")
]


class HangUp(KeyboardInterrupt):
    """SIGHUP arrived: handled as Ctrl-C (local trials checkpoint and are released; SLURM jobs keep running)."""


def hang_up(signum: int, frame: Any) -> None:
    """The SIGHUP handler of `sweeper run`: a terminal that is gone swallows what is printed from now on (a
    write to it would fail), then the run stops as on Ctrl-C."""
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        if os.isatty(fd):
            os.dup2(null, fd)
    os.close(null)
    raise HangUp


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print a UserError or MachineFault as `error: ...` on stderr and exit 2, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (UserError, MachineFault) as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as e:
            cause = " by a hang-up (SIGHUP)" if isinstance(e, HangUp) else ""
            typer.secho(f"interrupted{cause}: re-run the same command to resume", err=True)
            raise typer.Exit(130) from None

    return wrapper


@app.command(epilog="Example: sweeper run study=mu_search preset=smoke data.root=DATA")
@user_errors
def run(
    overrides: Overrides = None,
    detach: Annotated[bool, typer.Option("--detach", help="return after submitting (executor=slurm)")] = False,
) -> None:
    """Run (or resume) a study: `sweeper run study=mu_search preset=smoke`."""
    from sweeper.api import run_study
    from sweeper.core.overrides import split

    signal.signal(signal.SIGHUP, hang_up)
    run_study(overrides=split(overrides or []), detach=detach)


@app.command(epilog="Example: sweeper status study=paper --format json")
@user_errors
def status(
    overrides: Overrides = None,
    format: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """Show a study's trials: state, params, metrics, duration, progress."""
    from sweeper.search import status as status_mod

    status_mod.status(overrides or [], fmt=format)


@app.command(epilog="Example: sweeper train arch=srgan mu=0.5 beta=beta3_6 preset=smoke")
@user_errors
def train(
    overrides: Overrides = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the resolved config and the recipe table only")
    ] = False,
) -> None:
    """Train one run and log it to MLflow: `sweeper train arch=srgan mu=0.5 beta=beta3_6 preset=smoke`."""
    if dry_run:
        from sweeper.analysis import recipe

        recipe.dry_run(overrides or [])
        return
    from sweeper.search.train_one import train_one

    train_one(overrides or [])


@app.command(epilog="Example: sweeper recipe arch=esrgan preset=paper --format json")
@user_errors
def recipe(
    overrides: Overrides = None,
    format: Annotated[str, typer.Option("--format", help="markdown or json")] = "markdown",
    document: Annotated[bool, typer.Option("--document", help="docs/RECIPE.md: both archs at the defaults")] = False,
) -> None:
    """Every choice that shapes a result: value in effect, its key, paper text vs authors' code vs BasicSR."""
    from sweeper.analysis import recipe as recipe_mod

    recipe_mod.main(overrides or [], fmt=format, document_all=document)


@app.command(epilog="Example: sweeper studies")
@user_errors
def studies() -> None:
    """List the available studies with a one-line description."""
    from sweeper.core import studies as studies_mod

    studies_mod.list_studies()


@app.command(
    epilog="Example: sweeper evaluate sweeps/trials/mu_search/mu/6/ckpt/last.pt --data-root DATA --sets Set5,Set14"
)
@user_errors
def evaluate(
    tokens: Annotated[
        list[str],
        typer.Argument(
            help="bicubic | CHECKPOINT.pt | checkpoint=RUN_OR_PT [iter=N] | folder=DIR method=NAME [workspace=...], "
            "then scoring keys: metrics.space=rgb|y data.val_hr=mod12|mod4 metrics.lpips_net=alex|vgg metrics.lpips_version=0.1|0.0"
        ),
    ],
    data_root: Annotated[Path | None, typer.Option("--data-root", help="folder holding the benchmark sets")] = None,
    sets: Annotated[str, typer.Option("--sets", help="comma-separated set names")] = "Set5,Set14,BSD100",
    out: Annotated[Path | None, typer.Option("--out", help="CSV with one row per image")] = None,
    upscale: Annotated[int, typer.Option("--upscale")] = 4,
    lpips: Annotated[
        bool, typer.Option("--lpips/--no-lpips", help="compute LPIPS when its weights are present")
    ] = True,
) -> None:
    """Score bicubic, a checkpoint (or a kept snapshot: iter=N) or a folder of SR images: PSNR/SSIM in RGB and Y, LPIPS, per image.

    `sweeper evaluate bicubic --data-root DATA --sets Set5 metrics.space=rgb data.val_hr=mod12`;
    `sweeper evaluate folder=ESRGAN_results method=ESRGAN --sets Set5,Set14` also logs the method for Table 5."""
    from sweeper.analysis import evaluate as evaluate_mod

    evaluate_mod.main(tokens, data_root=data_root, sets=sets, out=out, upscale=upscale, use_lpips=lpips)


@figure_app.command("features")
@user_errors
def figure_features(
    overrides: Overrides = None,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="folder holding the benchmark sets")] = None,
    out: Annotated[Path, typer.Option("--out", help="the PNG to write")] = Path("fig4_features.png"),
) -> None:
    """Fig. 4: `sweeper figure features image=Set14/lenna block=beta1_2 vgg=phi3_3 channels=1,64,256 [weights=random]`."""
    from sweeper.analysis import paper_figures

    paper_figures.features_main(overrides or [], data_root, out)


@figure_app.command("crops")
@user_errors
def figure_crops(
    overrides: Overrides = None,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="folder holding the benchmark sets")] = None,
    out: Annotated[Path, typer.Option("--out", help="the PNG to write")] = Path("crops.png"),
    upscale: Annotated[int, typer.Option("--upscale")] = 4,
) -> None:
    """Figs. 6-10: `sweeper figure crops image=Set14/lenna [box=x,y,w,h] [checkpoint=LABEL:FILE ...]`: GT, bicubic, each checkpoint."""
    from sweeper.analysis import paper_figures

    paper_figures.crops_main(overrides or [], data_root, out, upscale)


@weights_app.command("status", epilog="Example: sweeper weights status")
@user_errors
def weights_status() -> None:
    """Show each weights file: needed by what, where it is looked for, present or missing, hash ok."""
    from trainer import weight_files

    weight_files.print_status()


@weights_app.command("import", epilog="Example: sweeper weights import ~/Downloads/vgg19-dcbb9e9d.pth")
@user_errors
def weights_import(files: Annotated[list[Path], typer.Argument(help="downloaded checkpoint files")]) -> None:
    """Copy downloaded checkpoint files into the torch hub cache after checking their hash."""
    from trainer import weight_files

    weight_files.import_files(files)


@data_app.command("prepare", epilog="Example: sweeper data prepare --data-root DATA --sets DIV2K")
@user_errors
def data_prepare(
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="key=value settings: preset=, upscale=, data.subimage_step=, data.cache=, workspace="),
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option("--data-root", help="folder holding the sets (default: data.root, $SWEEPER_DATA)")
    ] = None,
    sets: Annotated[
        str | None, typer.Option("--sets", help="comma-separated training sets (default: data.train_sets)")
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="processes (default: every core)")] = None,
) -> None:
    """Cut training sets into sub-images and make their LR once, for every trial: `sweeper data prepare --data-root DATA --sets DIV2K`."""
    from sweeper.search import prepare

    prepare.main(overrides or [], data_root=data_root, sets=sets, workers=workers)


@app.command(epilog="Example: sweeper ui workspace=sweeps --host 0.0.0.0 --port 5000")
@user_errors
def ui(
    overrides: Overrides = None,
    host: Annotated[str, typer.Option("--host", help="interface to serve on (0.0.0.0: every interface)")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 5000,
    workers: Annotated[int, typer.Option("--workers", help="MLflow server worker processes")] = 2,
    auth: Annotated[
        bool, typer.Option("--auth", help="MLflow's basic-auth (users and passwords; needs mlflow[auth])")
    ] = False,
) -> None:
    """Start the MLflow UI on the workspace's tracking store; it stops when this command does."""
    from sweeper.analysis import ui as ui_mod

    raise typer.Exit(ui_mod.serve(overrides or [], host=host, port=port, workers=workers, auth=auth))


@app.command(epilog="Example: sweeper logs study=paper stage=mu trial=3")
@user_errors
def logs(overrides: Overrides = None) -> None:
    """Print a trial's stdout/stderr: `sweeper logs study=mu_search trial=3`."""
    from sweeper.search import status as status_mod

    status_mod.logs(overrides or [])


@app.command(epilog="Example: sweeper cancel study=mu_search")
@user_errors
def cancel(overrides: Overrides = None) -> None:
    """Cancel a study's queued or running trials (SLURM jobs or local processes)."""
    from sweeper.search import status as status_mod

    status_mod.cancel(overrides or [])


@app.command(epilog="Example: sweeper correlate workspace=sweeps")
@user_errors
def correlate(overrides: Overrides = None) -> None:
    """Proxy-vs-target agreement (Table 4): Spearman, Kendall, exact permutation p, best/worst agreement."""
    from sweeper.analysis import correlate as correlate_mod

    correlate_mod.main(overrides or [])


@app.command(epilog="Example: sweeper export --from paper --out winner.safetensors")
@user_errors
def export(
    out: Annotated[Path, typer.Option("--out", help="the .safetensors file to write")],
    source: Annotated[
        str | None, typer.Option("--from", help="study whose winner (or --trial) to export (or study=NAME)")
    ] = None,
    trial: Annotated[
        int | None, typer.Option("--trial", help="a finished trial's number instead of the winner (or trial=N)")
    ] = None,
    overrides: Overrides = None,
) -> None:
    """Write a study's winning generator (or --trial N's) as safetensors with a JSON card: `sweeper export --from paper --out g.safetensors`."""
    from sweeper.search import export as export_mod

    export_mod.main(source, trial, out, overrides or [])


@app.command(epilog="Example: sweeper promote --to esrgan --from paper --dry-run")
@user_errors
def promote(
    to: Annotated[str, typer.Option("--to", help="target architecture")] = "esrgan",
    source: Annotated[str | None, typer.Option("--from", help="study to take the winner from (or study=NAME)")] = None,
    force: Annotated[bool, typer.Option("--force", help="promote without a (consistent) correlation check")] = False,
    allow_demo: Annotated[
        bool,
        typer.Option(
            "--allow-demo", help="promote a winner picked at preset=smoke or with random weights into preset=paper"
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="preview: whether the gate passes and why, the resolved config and command"),
    ] = False,
    overrides: Overrides = None,
) -> None:
    """Launch the full ESRGAN-DP run with the search's winning (mu, beta)."""
    from sweeper.search import promote as promote_mod

    promote_mod.main(
        to=to, source=source, force=force, dry_run=dry_run, overrides=overrides or [], allow_demo=allow_demo
    )


@app.command(epilog="Example: sweeper plan study=paper preset=paper scheduler.eta=3")
@user_errors
def plan(
    overrides: Overrides = None,
    format: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """Before a study runs: its trials, iterations and device-hours, naive, with scheduler=none and with scheduler=sha."""
    from sweeper.search import plan as plan_mod

    plan_mod.main(overrides or [], fmt=format)


@app.command("paper-check", epilog="Example: sweeper paper-check select_by=lpips")
@user_errors
def paper_check(overrides: Overrides = None) -> None:
    """Apply the selection rule (select_by=, select.tie_break=) to the paper's own Tables 1 and 2 and print
    what it would choose and how close the margins are."""
    from sweeper.analysis import paper

    paper.main(overrides or [])


@app.command("rank-check", epilog="Example: sweeper rank-check study=paper")
@user_errors
def rank_check(overrides: Overrides = None) -> None:
    """Replay successive halving on a scheduler=none study: per rung, rank agreement with the final ranking."""
    from sweeper.analysis import rankcheck

    rankcheck.main(overrides or [])


@app.command(epilog="Example: sweeper report study=paper --out results/paper --html")
@user_errors
def report(
    overrides: Overrides = None,
    out: Annotated[Path | None, typer.Option("--out", help="output folder (default results/<study>)")] = None,
    html: Annotated[
        bool,
        typer.Option(
            "--html",
            help="also write report.html: the whole report as one page, figures embedded (as logged to MLflow)",
        ),
    ] = False,
) -> None:
    """Regenerate the paper's tables and figures for a study from MLflow: Markdown, CSV, LaTeX, PNG. checkpoint=N
    shows every trial's generator kept at iteration N (train.keep_every), checkpoint=best holdout=SET the kept one
    best on a held-out set; default: the final one."""
    from sweeper.analysis import report as report_mod

    report_mod.main(overrides or [], out=out, write_html=html)
