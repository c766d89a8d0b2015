"""GPU booking with fake GPU counts (real flocks, real processes), thread shares, and the executors' options."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from sweeper.search import gpus
from sweeper.search.executors.base import TrialJob
from sweeper.search.executors.local import LocalExecutor
from sweeper.search.executors.slurm import shards_per_gpu
from trainer.errors import UserError

HOLDER = """
import sys, time
from sweeper.search import gpus
gpu, lock = gpus.book(int(sys.argv[1]), int(sys.argv[2]), announce=False)
print(gpu, flush=True)
time.sleep(600)
"""


@pytest.fixture
def locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "gpu-locks"
    monkeypatch.setenv("SWEEPER_GPU_LOCKS", str(folder))
    return folder


def holder(n_gpus: int, per_gpu: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(n_gpus), str(per_gpu)], stdout=subprocess.PIPE, text=True, env=os.environ
    )


def test_processes_spread_evenly_and_never_double_book(locks: Path) -> None:
    procs = [holder(2, 2) for _ in range(4)]
    try:
        booked = [int(p.stdout.readline()) for p in procs]
        assert Counter(booked) == {0: 2, 1: 2}  # slot-major: both GPUs get a trial before either gets a second
        assert gpus.held() == {0: 2, 1: 2}
        late = holder(2, 2)  # every slot is held: it waits
        time.sleep(1.5)
        assert late.poll() is None and gpus.held() == {0: 2, 1: 2}
        victim = booked.index(1)
        procs[victim].send_signal(signal.SIGKILL)  # a kill -9 releases the slot with the process
        procs[victim].wait()
        assert int(late.stdout.readline()) == 1
        procs.append(late)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert gpus.held() == {}


def test_a_second_sweeper_books_around_the_first(locks: Path, tmp_path: Path) -> None:
    """Slot 0 of both fake GPUs is held by "another sweeper" (this test); the executor's workers book slot 1."""
    held = [booked for _ in range(2) if (booked := gpus.try_book(2, 1)) is not None]
    assert sorted(h[0] for h in held) == [0, 1]
    executor = LocalExecutor(n_jobs=2, gpus=2, workspace=tmp_path / "ws", trials_per_gpu=2)
    jobs = []
    for n in range(2):  # trial folders without a config: each worker books its slot, then ends at once
        folder = tmp_path / "ws" / "trials" / "s" / "g" / str(n)
        folder.mkdir(parents=True)
        jobs.append(folder)
    ids = executor.submit([TrialJob("s", "g", n, folder, f"t.{n}") for n, folder in enumerate(jobs)])
    deadline = time.monotonic() + 120
    while any(executor.state(i) == "RUNNING" for i in ids):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for folder in jobs:
        out = (folder / "stdout.log").read_text()
        assert "[sweeper] booked GPU" in out and "slot 1" in out, out


def test_thread_shares_and_local_options(tmp_path: Path) -> None:
    assert gpus.thread_share(16, 4) == 4 and gpus.thread_share(2, 4) == 1 and gpus.thread_share(2, 0) == 2
    cores = len(os.sched_getaffinity(0))
    assert LocalExecutor.from_options({"n_jobs": 2}, tmp_path).threads == max(1, cores // 2)
    assert LocalExecutor.from_options({}, tmp_path).threads == cores  # one trial at a time on a CPU
    with pytest.raises(UserError, match="executor.trials_per_gpu=0: expected a positive integer"):
        LocalExecutor.from_options({"trials_per_gpu": 0}, tmp_path)
    with pytest.raises(
        UserError,
        match="executor.gpus is not an option of executor=local; valid: executor.n_jobs, executor.trials_per_gpu",
    ):
        LocalExecutor.from_options({"gpus": 2}, tmp_path)


def test_slurm_shards_per_gpu_from_sinfo() -> None:
    assert shards_per_gpu("gpu:a100:4,shard:16(S:0-1)") == 4
    assert shards_per_gpu("gpu:2,shard:a100:8") == 4
    assert shards_per_gpu("gpu:4") is None and shards_per_gpu("(null)") is None


def test_a_training_on_several_gpus_books_one_slot_on_each(locks: Path) -> None:
    """`train.devices=2` on 3 fake GPUs: one slot on each of two different GPUs, the third left for others."""
    ids, fds = gpus.book_devices(3, 1, 2)
    assert sorted(ids) == [0, 1] and gpus.held() == {0: 1, 1: 1}
    other = gpus.try_book(3, 1)
    assert other is not None and other[0] == 2
    assert gpus.try_book(3, 1) is None  # every slot is held now
    for fd in [*fds, other[2]]:
        os.close(fd)
    assert gpus.held() == {}


def test_planted_links_fifos_and_foreign_folders_are_refused_in_one_line(locks: Path, tmp_path: Path) -> None:
    locks.mkdir(mode=0o700)
    victim = tmp_path / "bashrc"
    victim.write_text("secret\n")
    victim.chmod(0o600)
    (locks / "gpu0.slot0.lock").symlink_to(victim)
    with pytest.raises(
        UserError, match=r"^GPU slot lock .*gpu0.slot0.lock is a symbolic link \(planted by someone\?\); refusing it"
    ):
        gpus.try_book(1, 1)
    assert victim.stat().st_mode & 0o777 == 0o600 and victim.read_text() == "secret\n"  # the target never changed
    (locks / "gpu0.slot0.lock").unlink()
    os.mkfifo(locks / "gpu0.slot0.lock")
    with pytest.raises(UserError, match=r"is not a regular file \(a FIFO, device or folder"):
        gpus.try_book(1, 1)  # refused at once: a FIFO never blocks the open
    (locks / "gpu0.slot0.lock").unlink()
    booked = gpus.try_book(1, 1)
    assert booked is not None
    gpu, slot, fd = booked
    assert (gpu, slot) == (0, 0) and (locks / "gpu0.slot0.lock").stat().st_mode & 0o777 == 0o644
    os.close(fd)

    linked = tmp_path / "linked"
    linked.symlink_to(locks)
    os.environ["SWEEPER_GPU_LOCKS"] = str(linked)
    with pytest.raises(UserError, match=r"^GPU lock folder .*linked is a symbolic link, not a folder"):
        gpus.try_book(1, 1)
    if os.geteuid() == 0:  # a folder of another user (only root can make one here)
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o777)
        os.chown(foreign, 65534, 65534)
        os.environ["SWEEPER_GPU_LOCKS"] = str(foreign)
        with pytest.raises(
            UserError,
            match=r"^GPU lock folder .*foreign belongs to uid 65534, not to you, and is not a root-owned folder of mode 1777",
        ):
            gpus.try_book(1, 1)
    open_to_all = tmp_path / "open"
    open_to_all.mkdir()
    open_to_all.chmod(0o777)
    os.environ["SWEEPER_GPU_LOCKS"] = str(open_to_all)
    with pytest.raises(UserError, match=r"writable by others without the sticky bit \(mode 777\)"):
        gpus.try_book(1, 1)


def test_book_says_who_holds_the_slots_and_gives_up(locks: Path, capsys: pytest.CaptureFixture) -> None:
    proc = holder(1, 1)
    try:
        assert int(proc.stdout.readline()) == 0
        with pytest.raises(
            OSError,
            match=rf"^every GPU slot stayed booked for 2 s \(gpu0.slot0: pid {proc.pid} \(\w+\)\): "
            r"wait for them to end, or set SWEEPER_GPU_LOCKS",
        ) as e:
            gpus.book(1, 1, wait_s=2)
        assert e.value.errno == errno.EBUSY
        assert f"all 1 GPU slots of this machine are booked (gpu0.slot0: pid {proc.pid} (" in capsys.readouterr().out
    finally:
        proc.kill()
        proc.wait()
