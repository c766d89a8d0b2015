"""Faults of the machine (issue 19): a killed data prepare never blocks the next one, a lock left open by
a dead holder's leftover process is taken over, a full file system is refused in one line with numbers."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cluster_helpers import TINY, env_for, sweeper, tiny
from optuna.trial import TrialState

from sweeper.core.repeats import units
from sweeper.core.studies import available, load
from sweeper.core.workspace import (
    MACHINE,
    Workspace,
    claim,
    enqueue,
    failures,
    finish,
    point_key,
    resolved,
    stage_trials,
)
from sweeper.search.progress import where
from sweeper.search.watchdog import progress_mark, stall_limit
from tests.test_crash import assert_sound, crash_env, start, study_args, wait_for_a_job
from tests.test_prepared import cfg_for, make_set
from tests.test_search import GRID, make_stage
from trainer import heartbeat
from trainer.checkpoint import save_atomic
from trainer.data import prepare_set
from trainer.errors import NoSpace, UserError, environment_fault
from trainer.files import file_lock

ROOT = Path(__file__).parents[1]

# A process that imports the trainer once and, for each line on stdin, forks a child preparing the set in the
# folder given there with a pool of two workers (stderr to CACHE/<n>.err), and prints the child's pid: each
# child is a separate `prepare` process that the test can SIGKILL, without paying torch's import each time.
DRIVER = """
import os, signal, sys
from pathlib import Path
from tests.test_prepared import cfg_for
from trainer.data import prepare_set
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
root = Path(sys.argv[1])
for n, line in enumerate(sys.stdin):
    cache = Path(line.strip())
    pid = os.fork()
    if pid == 0:
        err = os.open(cache.parent / f"{cache.name}.{n}.err", os.O_WRONLY | os.O_CREAT, 0o644)
        os.dup2(err, 2)
        code = 1
        try:
            prepare_set(cfg_for(root, cache, **{"data.subimage_step": 16}), "Train", cache, workers=2)
            code = 0
        finally:
            os._exit(code)
    print(pid, flush=True)
"""


def descendants(pid: int) -> list[int]:
    """The process's children and theirs (Linux /proc)."""
    try:
        kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [d for k in kids for d in descendants(k)]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.mark.slow
def test_prepare_killed_at_ten_points_never_blocks_the_next_and_ends_byte_identical(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_set(data, 16, (160, 160))
    cache = tmp_path / "cache"
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(data)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert driver.stdin and driver.stdout
    done = lambda: len(list(cache.glob("Train-*/done/*.json")))  # noqa: E731
    plan = lambda: any(cache.glob("Train-*/plan.json"))  # noqa: E731
    holder = lambda pid: lambda: any(f"{pid} " in p.read_text() for p in cache.glob("Train-*.lock"))  # noqa: E731
    # where each run is killed: while starting, holding the lock, after the plan, then after 1 .. 15 images
    points = [
        lambda pid: lambda: True,
        holder,
        lambda pid: plan,
        *[lambda pid, k=k: lambda: done() >= k for k in (1, 3, 5, 7, 9, 12, 15)],
    ]
    try:
        for n, point in enumerate(points):
            driver.stdin.write(f"{cache}\n")
            driver.stdin.flush()
            pid = int(driver.stdout.readline())
            started = time.monotonic()
            wait_for(point(pid))
            workers = descendants(pid)
            os.kill(pid, signal.SIGKILL)
            wait_for(
                lambda pid=pid, workers=workers: not alive(pid) and not any(alive(w) for w in workers), timeout=5
            )  # the pool died with it
            if n >= 2:  # every run after the first kill got past the lock within seconds
                assert time.monotonic() - started < 30
            assert not any(cache.glob("Train-*/manifest.json")), f"point {n}: finished before the kill"
        driver.stdin.write(f"{cache}\n")
        driver.stdin.flush()
        pid = int(driver.stdout.readline())
        started = time.monotonic()
        wait_for(lambda: any(cache.glob("Train-*/manifest.json")) and not alive(pid), timeout=60)
        assert time.monotonic() - started < 30
        reference = tmp_path / "reference"
        driver.stdin.write(f"{reference}\n")
        driver.stdin.flush()
        pid = int(driver.stdout.readline())
        wait_for(lambda: any(reference.glob("Train-*/manifest.json")) and not alive(pid), timeout=60)
    finally:
        driver.stdin.close()
        driver.wait(timeout=30)
    last = (tmp_path / f"cache.{len(points)}.err").read_text()
    assert "of 16 images to do" in last and "16 of 16" not in last  # resumed, not started over
    (folder,), (ref,) = cache.glob("Train-*/"), reference.glob("Train-*/")
    for name in ("hr.npy", "lr.npy", "images.npy", "windows.npy"):
        assert (folder / name).read_bytes() == (ref / name).read_bytes(), name


# A process that takes a lock, leaks its descriptor to a long-lived child (as a process started with the lock's
# descriptor passed on would), prints the child's pid and waits to be killed.
LEAKER = """
import fcntl, os, subprocess, sys, time
from pathlib import Path
from trainer.files import file_lock
with file_lock(Path(sys.argv[1])):
    fd = next(int(n) for n in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{n}") == sys.argv[1])
    child = subprocess.Popen(["sleep", "120"], pass_fds=[fd])
    print(child.pid, flush=True)
    time.sleep(120)
"""


def test_a_lock_whose_holder_is_gone_is_taken_over(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    lock = tmp_path / "set.lock"
    leaker = subprocess.Popen([sys.executable, "-c", LEAKER, str(lock)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert leaker.stdout
    sleeper = int(leaker.stdout.readline())
    try:
        leaker.kill()
        leaker.wait()
        held = os.open(lock, os.O_RDONLY)
        with pytest.raises(BlockingIOError):  # the lock outlived its holder: the leftover child keeps it
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(held)
        started = time.monotonic()
        with file_lock(lock):
            assert time.monotonic() - started < 5
            assert f"{os.getpid()} " in lock.read_text()
        err = capfd.readouterr().err
        assert (
            f"note: {lock} was held by process {leaker.pid}, which has ended" in err and "taking the lock over" in err
        )
    finally:
        os.kill(sleeper, signal.SIGKILL)


def test_a_lock_held_by_a_live_process_is_waited_for(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    lock = tmp_path / "set.lock"
    holder = subprocess.Popen([sys.executable, "-c", LEAKER, str(lock)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout
    os.kill(int(holder.stdout.readline()), signal.SIGKILL)  # only the holder itself has the lock now
    got: list[float] = []

    def take() -> None:
        with file_lock(lock):
            got.append(time.monotonic())

    waiter = threading.Thread(target=take)
    try:
        waiter.start()
        time.sleep(1.0)
        assert not got  # its holder is alive: no take-over, the waiter waits
        killed = time.monotonic()
        holder.kill()
        holder.wait()
        waiter.join(timeout=10)
        assert got and got[0] >= killed
        assert "taking the lock over" not in capfd.readouterr().err
    finally:
        holder.kill()


def test_a_wait_for_a_lock_keeps_the_heartbeat_moving_and_the_default_stall_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19's stall watchdog: a training waiting for a lock another holds (the pre-training cache, a data set)
    rewrites its progress.json as it waits, saying what for, so the watchdog (which compares `progress_mark`s)
    never takes the wait for a stall; the default limit is the longer of 10 minutes and 10 of its steps."""
    monkeypatch.setattr(heartbeat, "EVERY_S", 0.05)
    lock = tmp_path / "cache.lock"
    held = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    threading.Timer(1.0, os.close, (held,)).start()
    marks = set()

    def waiting() -> None:
        heartbeat.beat("waiting for the pre-training cache")
        marks.add(progress_mark(tmp_path))

    with heartbeat.attached(tmp_path):
        heartbeat.write({"stage": "pretrain", "step": 0, "total": 10})
        with file_lock(lock, waiting):
            pass
    assert len(marks) >= 5, marks  # rewritten all along the second's wait
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress == {"stage": "pretrain", "step": 0, "total": 10, "doing": "waiting for the pre-training cache"}
    assert where(progress) == "pretrain 0/10 (waiting for the pre-training cache)"
    heartbeat.beat("nothing")  # no longer attached: nothing is written
    assert json.loads((tmp_path / "progress.json").read_text()) == progress
    assert (stall_limit({}), stall_limit({"it_s": 2.0}), stall_limit({"it_s": 0.01})) == (600, 600, 1000)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs (root only; the test is skipped elsewhere), unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_a_checkpoint_that_does_not_fit_is_refused_with_the_numbers(small_fs: Path) -> None:
    (small_fs / "other").write_bytes(b"x" * (3 << 20))  # someone else's 3 MB
    with pytest.raises(
        NoSpace,
        match=rf"^no space left on the file system of {small_fs}/ckpt: 1.0 MB free, a "
        r"checkpoint needs ~1.9 MB; free some space \(or use a larger disk\) and run again$",
    ) as e:
        save_atomic({"g": torch.zeros(500_000)}, small_fs / "ckpt" / "last.pt")
    assert e.value.errno == 28 and [p.name for p in small_fs.iterdir()] == ["other"]  # refused before writing


def test_torchs_writer_error_on_a_full_disk_surfaces_as_no_space(small_fs: Path) -> None:
    big_pickle = {"g": torch.zeros(10), "log": list(range(1_000_000))}  # its tensors say ~0 MB; the file is ~5 MB
    with pytest.raises(NoSpace, match=r"^no space left on the file system of .*: 0.0 MB free, a checkpoint needs"):
        save_atomic(big_pickle, small_fs / "last.pt")
    assert list(small_fs.iterdir()) == []  # no half-written temporary file is left


def test_prepare_checks_the_space_its_images_need(tmp_path: Path, small_fs: Path) -> None:
    make_set(tmp_path / "data", 4, (400, 400))  # 4 x 480 kB of HR pixels + their sub-images' LR: ~2.0 MB
    (small_fs / "other").write_bytes(b"x" * (3 << 20))
    with pytest.raises(NoSpace, match=r": 1.0 MB free, preparing Train needs ~2.0 MB; free some space"):
        prepare_set(cfg_for(tmp_path / "data", small_fs, **{"data.subimage_step": 48}), "Train", small_fs, workers=1)
    (small_fs / "other").unlink()
    assert (
        prepare_set(
            cfg_for(tmp_path / "data", small_fs, **{"data.subimage_step": 48}), "Train", small_fs, workers=1
        ).built
        == 4
    )  # space freed: the same call goes through


def test_the_machines_faults_are_told_from_a_runs_own(tmp_path: Path) -> None:
    eio = OSError(errno.EIO, "Input/output error", str(tmp_path / "ckpt.pt"))
    assert environment_fault(eio) == (
        f"I/O error on {tmp_path}/ckpt.pt (a failing disk or network file system): "
        "check that file system, then run again"
    )
    wrapped = RuntimeError("DataLoader worker failed")
    wrapped.__cause__ = OSError(errno.EROFS, "Read-only file system", "/data/x.png")
    assert environment_fault(wrapped) == (
        "the file system of /data/x.png is read-only: remount it read-write or pass another workspace=, then run again"
    )
    assert environment_fault(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")).startswith(
        "CUDA out of memory (another process on the GPU"
    )
    assert (
        environment_fault(NoSpace("no space left on the file system of /w: 1 MB free"))
        == "no space left on the file system of /w: 1 MB free"
    )
    for own in (
        ValueError("mu must be > 0"),
        FileNotFoundError(errno.ENOENT, "No such file", "x"),
        KeyError("g"),
        RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
    ):
        assert environment_fault(own) is None, own


def mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {mounted.stderr.strip()}")


def run_json(ws: Path, env: dict[str, str]) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-m", "sweeper.cli", "status", "study=mu_search", f"workspace={ws}", "--format", "json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["trials"]


@pytest.mark.slow
def test_a_full_disk_stops_the_study_in_one_line_spends_no_retry_and_the_rerun_finishes(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    small = [
        *tiny("train.ckpt_every=2"),
        "model.num_feat=8",
        "model.num_blocks=1",
        "max_retries=0",
    ]  # one checkpoint a trial
    args = lambda ws: [sys.executable, "-m", "sweeper.cli", "run", "study=mu_search", f"workspace={ws}", *small]  # noqa: E731
    reference = subprocess.run(
        args(tmp_path / "reference"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    ws = tmp_path / "ws"
    mount_tmpfs(ws / "trials", "1m")  # the trial folders on a 1 MB file system: no checkpoint fits
    try:
        full = subprocess.run(args(ws), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr[-3000:]
        last = full.stderr.strip().splitlines()[-1]
        assert re.fullmatch(
            rf"error: stopped: 3 trials in a row could not run for a fault of the machine, not of their "
            rf"settings \(no retry spent\); the last: no space left on the file system of {ws}/trials/"
            rf"mu_search/mu/\d/ckpt: 0\.\d MB free, a checkpoint needs ~[\d.]+ MB; free some space \(or "
            rf"use a larger disk\) and run again\. Re-run the same command to resume once it is fixed",
            last,
        ), last
        trials = run_json(ws, env)
        assert [t["state"] for t in trials].count("FAIL") == 3 and all(
            t["reason"].startswith("machine fault: no space left") for t in trials if t["state"] == "FAIL"
        )
        assert not [t for t in trials if t["state"] == "COMPLETE"]
        subprocess.run(["mount", "-o", "remount,size=1g", str(ws / "trials")], check=True)  # the disk enlarged
        done = subprocess.run(args(ws), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        complete = [t for t in run_json(ws, env) if t["state"] == "COMPLETE"]
        expected = {
            t["params"]["mu"]: t["metrics"] for t in run_json(tmp_path / "reference", env) if t["state"] == "COMPLETE"
        }
        assert len(complete) == 7 and {t["params"]["mu"]: t["metrics"] for t in complete} == expected
        assert {t["attempt"] for t in complete} == {1}  # no retry spent (max_retries=0 would have lost the points)
    finally:
        subprocess.run(["umount", "-l", str(ws / "trials")])


@pytest.mark.slow
def test_a_hang_up_stops_the_run_like_ctrl_c_and_the_rerun_spends_no_retry(tmp_path: Path) -> None:
    env, ws = crash_env(tmp_path), tmp_path / "ws"
    args = study_args(ws, "sqlite", "train.iters=12", "train.val_every=12")
    runner = start(args, env)
    wait_for_a_job(ws, runner)
    runner.send_signal(signal.SIGHUP)  # the SSH session dropped
    _, err = runner.communicate(timeout=180)
    assert runner.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "interrupted by a hang-up (SIGHUP): re-run the same command to resume"
    interrupted = [json.loads(p.read_text()) for p in ws.glob("trials/crash/mu/*/result.json")]
    assert interrupted and {r["status"] for r in interrupted} == {"interrupted"}  # the local trial checkpointed
    done = sweeper(args, env)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = assert_sound(ws, "sqlite")
    assert {t.user_attrs["attempt"] for t in trials} == {1}  # nothing failed, no retry spent


def test_machine_faults_spend_no_retry_and_retry_failed_reopens_a_point(tmp_path: Path) -> None:
    ws, storage, sid = make_stage(tmp_path)
    points = units(GRID, 1)[:1]
    enqueue(storage, sid, ws, "mu_search", "mu", GRID.grid, points, max_retries=0)
    first = claim(storage, sid)
    finish(storage, sid, first.number, TrialState.FAIL, None, {"reason": f"{MACHINE}: no space left on ..."})
    enqueue(storage, sid, ws, "mu_search", "mu", GRID.grid, points, max_retries=0)  # not counted: a new attempt
    second = claim(storage, sid)
    assert second.user_attrs == {"attempt": 1, "trial_dir": first.user_attrs["trial_dir"]}
    finish(storage, sid, second.number, TrialState.FAIL, None, {"reason": "GAN training diverged at iteration 3"})
    enqueue(storage, sid, ws, "mu_search", "mu", GRID.grid, points, max_retries=0)
    assert claim(storage, sid) is None  # the trial's own failure used up max_retries=0
    enqueue(storage, sid, ws, "mu_search", "mu", GRID.grid, points, max_retries=0, reopen=True)  # retry_failed=true
    third = claim(storage, sid)
    assert third.user_attrs == {
        "attempt": 1,
        "trial_dir": first.user_attrs["trial_dir"],
        "counted_from": second.number + 1,
    }
    enqueue(storage, sid, ws, "mu_search", "mu", GRID.grid, points, max_retries=0, reopen=True)  # live: not again
    assert claim(storage, sid) is None
    finish(storage, sid, third.number, TrialState.FAIL, None, {"reason": "boom"})
    trials = stage_trials(storage, sid)[point_key(points[0].params)]
    assert failures(trials) == 1 and resolved(trials, 0)  # only the failure since the re-opening counts


def test_an_open_workspace_and_a_trial_dir_outside_it_are_refused(tmp_path: Path) -> None:
    open_ws = tmp_path / "shared-ws"
    open_ws.mkdir()
    open_ws.chmod(0o775)
    env = env_for(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "sweeper.cli", "run", "study=mu_search", f"workspace={open_ws}", *TINY],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr == (
        f"error: workspace {open_ws} is writable by group (mode 775): they could plant files that run "
        f"as you; make it yours alone with `chmod go-w {open_ws}`, or use another folder\n"
    )
    assert os.listdir(open_ws) == []  # nothing created in it
    ws = Workspace.resolve(str(tmp_path / "ws"))
    ws.create()
    assert stat.S_IMODE((tmp_path / "ws").stat().st_mode) == 0o700
    inside = ws.trial_dir("s", "g", 0)
    assert ws.recorded_trial_dir(str(inside)) == inside
    (tmp_path / "ws" / "trials").mkdir()
    (tmp_path / "ws" / "trials" / "escape").symlink_to(tmp_path)
    for outside in (
        str(tmp_path / "home"),
        str(tmp_path / "ws" / "trials" / ".." / ".." / "x"),
        str(tmp_path / "ws" / "trials" / "escape" / "y"),
    ):
        with pytest.raises(
            UserError, match=r"^the Optuna record names trial folder .*, outside .*/ws/trials; refusing to use it"
        ):
            ws.recorded_trial_dir(outside)


def test_a_code_carrying_checkpoint_is_refused_in_one_line(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    marker = tmp_path / "pwned"
    evil.write_bytes(subprocess.run([sys.executable, "-c", EVIL, str(marker)], capture_output=True, check=True).stdout)
    done = subprocess.run(
        [sys.executable, "-m", "sweeper.cli", "evaluate", str(evil), "--sets", "Set5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and not marker.exists()
    assert done.stderr == (
        f"error: {evil}: refused: it holds Python objects other than tensors and plain values, which "
        "could run code when loaded; only checkpoints written by this trainer are loaded\n"
    )


EVIL = """
import io, os, sys, torch
class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {sys.argv[1]}",))
buf = io.BytesIO()
torch.save({"g": Evil(), "config": {}}, buf)
sys.stdout.buffer.write(buf.getvalue())
"""


@pytest.mark.slow
def test_ui_on_every_interface_warns_checks_host_headers_and_keeps_uploads_in_the_workspace(tmp_path: Path) -> None:
    ws = Workspace.resolve(str(tmp_path / "ws"))
    ws.create()
    ws.create_stores()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen(
        [sys.executable, "-m", "sweeper.cli", "ui", f"workspace={ws.root}", "--host", "0.0.0.0", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert ui.stdout and "MLflow UI at" in next(line for line in ui.stdout if "MLflow UI" in line)

        def request(
            host: str, method: str = "GET", path: str = "/api/2.0/mlflow/experiments/search?max_results=1"
        ) -> int:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}{path}",
                method=method,
                headers={"Host": host},
                data=b"hello" if method == "PUT" else None,
            )
            try:
                with urllib.request.urlopen(req, timeout=30) as reply:
                    return reply.status
            except urllib.error.HTTPError as e:
                return e.code

        assert request("evil.example") == 403 and request(f"localhost:{port}") == 200  # DNS rebinding still refused
        assert request(f"{socket.gethostname()}:{port}") == 200
        assert request(f"localhost:{port}", "PUT", "/api/2.0/mlflow-artifacts/artifacts/x/up.txt") == 200
        assert (ws.artifacts_dir / "x" / "up.txt").read_text() == "hello" and not (tmp_path / "mlartifacts").exists()
    finally:
        ui.terminate()
        _, err = ui.communicate(timeout=60)
    assert err.startswith(
        "warning: --host 0.0.0.0 serves this workspace's MLflow store (every run, metric and artifact) "
        "to anyone who can reach this machine, with no password (--auth adds MLflow basic-auth)\n"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder of another user needs root")
def test_studies_of_a_folder_someone_else_owns_are_ignored_and_names_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SWEEPER_STUDIES", raising=False)
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "mu_search.yaml").write_text("description: planted\nconfig: {}\nstages: []\n")
    assert (
        available()["mu_search"].resolve() == tmp_path / "studies" / "mu_search.yaml"
    )  # ours: it may replace a built-in one
    os.chown(tmp_path / "studies", 65534, 65534)
    assert available()["mu_search"].parent.parent == ROOT  # another user's ./studies (say in /tmp) is not read
    with pytest.raises(UserError, match=r"^study='\.\./x': a study name is letters, digits and _"):
        load("../x")
