"""`sweeper ui`: the MLflow UI on the workspace's tracking store, owned by this process.

The MLflow server and its workers run in a process group of their own; SIGTERM, SIGINT, SIGHUP or the
end of `sweeper ui` stop the whole group (a kill -9 of `sweeper ui` cannot be caught: the server then gets
SIGTERM from the kernel, through PR_SET_PDEATHSIG, and its workers end with it). Once the server answers,
the command prints one link per study: the study's trials, flat, with their settings and metrics as columns
(the view `sweeper.search.tracking.ui_view` stored on each study's experiment).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from types import FrameType

from mlflow import MlflowClient

from sweeper.core.mlflow_names import VIEW_KEY, VIEW_TAG
from sweeper.core.overrides import parse
from sweeper.core.workspace import Workspace
from trainer.errors import UserError
from trainer.procs import die_with_parent

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
GRACE_S = 5.0  # how long the server may take to stop before it is killed (it keeps no state of its own)


def stop_group(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (server and workers), then SIGKILL whatever is left after GRACE_S."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + GRACE_S
        while group_alive(server.pid) and time.monotonic() < deadline:
            server.poll()  # reap the server itself, so that it does not linger as a zombie of the group
            time.sleep(0.1)
        if not group_alive(server.pid):
            break
    server.wait()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until_up(url: str, server: subprocess.Popen[bytes], timeout_s: float = 120.0) -> bool:
    """Poll the server's health endpoint until it answers (False when it exited or took too long)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    return False


def study_links(client: MlflowClient, url: str) -> list[str]:
    """`<experiment>: <link>` per experiment; a study's link opens the view of its trials."""
    lines = []
    for e in client.search_experiments():
        if e.name == "Default" and not client.search_runs([e.experiment_id], max_results=1):
            continue
        view = f"?viewStateShareKey={VIEW_KEY}" if VIEW_TAG in e.tags else ""
        lines.append(f"  {e.name:<14} {url}/#/experiments/{e.experiment_id}/runs{view}")
    return lines


def server_command(ws: Workspace, host: str, port: int, workers: int, auth: bool = False) -> list[str]:
    """The `mlflow server` command line: artifacts uploaded through it go to the workspace's own folder (never
    `./mlartifacts` of wherever it was started), and the Host headers it accepts are the host given (for
    0.0.0.0, this machine's names) rather than any (`--allowed-hosts *` would undo MLflow's DNS-rebinding check)."""
    names = [socket.gethostname(), socket.getfqdn()] if host == "0.0.0.0" else [host]
    allowed = sorted({n for name in [*names, "localhost", "127.0.0.1"] for n in (name, f"{name}:{port}")})
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", ws.tracking_uri,
            "--artifacts-destination", str(ws.artifacts_dir), "--host", host, "--port", str(port),
            "--workers", str(workers), "--allowed-hosts", ",".join(allowed),
            "--uvicorn-opts", "--log-level warning",  # no line per HTTP request
            *(["--app-name", "basic-auth"] if auth else [])]  # fmt: skip


def serve(tokens: list[str], host: str, port: int, workers: int, auth: bool = False) -> int:
    """Run the MLflow server until it exits or this process is told to stop; returns the exit code."""
    opts = parse(tokens, allow_config=False, recorded=True)
    ws = Workspace.resolve(opts.workspace, opts.storage, opts.tracking_uri)
    if opts.tracking_uri is None and not (ws.root / "mlflow.db").exists():
        raise UserError(
            f"no MLflow store in workspace {ws.root}: run a study first (`sweeper run study=mu_search preset=smoke{opts.where}`) or pass workspace= / tracking_uri="
        )
    with socket.socket() as probe:
        if probe.connect_ex((host if host != "0.0.0.0" else "127.0.0.1", port)) == 0:
            raise UserError(f"--port {port}: something already listens on {host}:{port}; pass another --port")
    if host not in LOOPBACK:
        print(
            f"warning: --host {host} serves this workspace's MLflow store (every run, metric and artifact) to anyone "
            f"who can reach this machine{'' if auth else ', with no password (--auth adds MLflow basic-auth)'}",
            file=sys.stderr,
            flush=True,
        )
    cmd = server_command(ws, host, port, workers, auth)
    env = {
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        **os.environ,
    }  # its job runner (7 queue consumers) serves GenAI features only
    server = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=lambda: die_with_parent(signal.SIGTERM))

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous: dict[int, Callable | int | None] = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        url = f"http://{socket.gethostname() if host == '0.0.0.0' else host}:{port}"
        if wait_until_up(f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}", server):
            print(
                f"MLflow UI at {url} (Ctrl-C stops it). Each study's trials, with settings and metrics as columns:",
                flush=True,
            )
            print("\n".join(study_links(MlflowClient(ws.tracking_uri), url)), flush=True)
        return server.wait()
    finally:
        stop_group(server)
        for s, handler in previous.items():
            signal.signal(s, handler)
