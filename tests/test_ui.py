"""`sweeper ui` in a real browser: the MLflow server it starts shows a study's trials in Debian's headless
Chromium as issue 22 item 6 asked (run names with their stage, the study's description, metrics rounded to
the tables' decimals, the report as an HTML page MLflow previews), and SIGTERM to `sweeper ui` stops the
server and all its workers."""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import mlflow_layout
import numpy as np
import pytest
from cluster_helpers import REPO, sweeper_args

from sweeper.analysis import report
from sweeper.analysis.ui import group_alive
from sweeper.core.mlflow_names import experiment

MUS = [0.2, 0.5, 1, 5, 10, 20, float("inf")]
DESCRIPTION = "Table 1: the mu grid at beta1_3 (a description for the UI test)"


def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (as root); the test skips with the reason otherwise."""
    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, timeout=900)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip(
            "Chromium is not installed and could not be (`apt-get install -y chromium` needs root and Debian's archive)"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_until(proc: subprocess.Popen[str], marker: str, timeout_s: float) -> list[str]:
    """Lines of `proc`'s stdout up to the one containing `marker` (read unbuffered: a line already in a reader's
    buffer never wakes `select`)."""
    text = ""
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 1.0)[0]:
            text += os.read(proc.stdout.fileno(), 65536).decode()
            lines = text.splitlines()
            for n, line in enumerate(lines):
                if marker in line:
                    return lines[: n + 1]
    raise AssertionError(f"no {marker!r} from sweeper ui within {timeout_s}s: {text}")


def process_groups_of_children(pid: int) -> set[int]:
    """Process groups of `pid`'s children (the MLflow server leads its own)."""
    groups = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            groups.add(int(fields[2]))
    return groups


@pytest.mark.slow
def test_the_ui_shows_the_trials_in_a_browser_and_dies_with_sweeper_ui(tmp_path: Path) -> None:
    browser = chromium()
    _, client = mlflow_layout.store(tmp_path)
    # PSNR means 19.623456 + k: the UI's columns must show 19.62 + k, not a cut full value
    trials = [{"arch": "srgan", "mu": mu, "final": mlflow_layout.scores(20.123456 + k, 0.5, 0.2), "sample": np.zeros((8, 8, 3), np.uint8)}
              for k, mu in enumerate(MUS)]  # fmt: skip
    stage_run, _ = mlflow_layout.log_stage(client, tmp_path, "mu_search", "mu", trials, winner=6, select_by="psnr")
    exp = experiment(client, "mu_search", tmp_path / "artifacts", DESCRIPTION)  # as `sweeper run` gives the study's
    report.main(["study=mu_search", f"workspace={tmp_path}"], out=tmp_path / "report")  # logs report/ on the stage run
    port = free_port()
    ui = subprocess.Popen(sweeper_args(["ui", f"workspace={tmp_path}", "--port", str(port), "--workers", "1"]), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        lines = read_until(ui, "viewStateShareKey=", timeout_s=180)  # the study's link (after the baselines')
        assert any("MLflow UI at" in line for line in lines) and lines[-1].split()[0] == "mu_search", lines
        link = lines[-1].split()[-1]

        def dom(url: str) -> str:
            return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                   "--window-size=1920,1200", "--virtual-time-budget=20000", "--dump-dom", url],
                                  capture_output=True, text=True, timeout=180).stdout  # fmt: skip

        page = dom(link)
        for mu in ("0.2", "0.5", "20", "inf"):
            assert f"mu={mu} beta1_3 · mu" in page, f"trial mu={mu} with its stage not on the page {link}"
        assert "rounded/mean/psnr" in page and "mu_search · mu" not in page  # metric columns; stage runs filtered out
        assert all(f"{19.62 + k:.2f}" in page for k in range(len(MUS))) and "19.623" not in page  # rounded, not cut
        assert DESCRIPTION in page  # the experiment's description
        base = link.split("/#/")[0]
        with urllib.request.urlopen(f"{base}/get-artifact?path=report/report.html&run_uuid={stage_run}") as reply:
            kind, html = reply.headers["Content-Type"], reply.read().decode()
        assert kind.startswith("text/html") and "<table>" in html and "Table 1" in html  # the whole report, one page
        assert 'src="data:image/png;base64,' in html and 'src="figures/' not in html  # figures inside it
        preview = dom(f"{base}/#/experiments/{exp}/runs/{stage_run}/artifacts/report/report.html")
        assert 'class="mlflow-html-iframe"' in preview, "MLflow's artifact view does not preview report.html as a page"
        groups = process_groups_of_children(ui.pid)
        assert groups, "sweeper ui started no server"
    finally:
        ui.send_signal(signal.SIGTERM)
        code = ui.wait(timeout=60)
    assert code == 128 + signal.SIGTERM
    deadline = time.monotonic() + 20
    while any(group_alive(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(group_alive(g) for g in groups), "the MLflow server or a worker outlived sweeper ui"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still served after sweeper ui ended"
