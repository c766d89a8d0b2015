"""One training on several ranks (`train.devices`, trainer/distributed.py), for real: gloo ranks launched by
torch.distributed.run's elastic agent on this CPU, compared with one process on the whole batch.

The maths is the same (global BatchNorm statistics, global RaGAN means and DP weight zeta, DDP's averaged
gradients), so only float rounding separates the two: sums in another order. The first iteration's losses
(before any optimiser step) agree to 1e-5; afterwards the generator's side (l_pix, l_VGG, l_RES, zeta) stays
within 1e-4 and its weights within 1e-4, but the discriminator's losses drift by up to about 1e-2 relative
within a few steps. That drift is Adam's, not the split's: Adam moves each weight by about lr per step
whatever its gradient's size, so the few discriminator gradient elements that float rounding alone flips in
sign (one process in float32 against float64 flips as many) move by 2 lr. Per-rank BatchNorm in the
discriminator (BasicSR's DDP) fails the first-iteration check by far (l_adv off by 1e-2 before any step).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainer.config import NOT_COMPUTATION, build_config
from trainer.data import TrainBatches
from trainer.errors import UserError
from trainer.train import train

TINY = {
    "preset": "smoke",
    "weights": "random",
    "model.num_blocks": 1,
    "model.num_feat": 16,
    "model.growth": 8,
    "data.batch_size": 4,
    "train.log_every": 1,
    "train.val_every": 100,
}
G_SIDE = ("l_pix", "l_vgg", "l_res", "l_percep", "dp_weight")  # functions of the generator's weights only
RTOL_FIRST, RTOL_G, RTOL_D, WEIGHT_ATOL = 1e-5, 1e-4, 2e-2, 1e-4


def tiny(**overrides):
    return build_config({**TINY, **overrides})


def train_records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def assert_same_training(one: Path, ranks: Path) -> None:
    """The same losses at every step and the same final generator weights, to float tolerance."""
    a, b = train_records(one), train_records(ranks)
    assert [r["step"] for r in a] == [r["step"] for r in b]  # every step logged once, resumed or not
    for x, y in zip(a, b):
        for key in x.keys() - {"step", "kind", "step_s", "time"}:  # the losses, not the clock
            rel = RTOL_FIRST if x["step"] == 1 else RTOL_G if key in G_SIDE else RTOL_D
            assert y[key] == pytest.approx(x[key], rel=rel, abs=1e-8), (x["step"], key)
    ga, gb = (torch.load(run / "ckpt" / "last.pt", weights_only=True)["g"] for run in (one, ranks))
    assert ga.keys() == gb.keys()
    worst = max(float((ga[k].float() - gb[k].float()).abs().max()) for k in ga)
    assert worst < WEIGHT_ATOL


def test_shards_cut_the_global_batch(tmp_path):
    """Rank r's batch is rows [r*B/N, (r+1)*B/N) of the batch one process makes: same patches, same order."""
    cfg, cache = tiny(), tmp_path
    whole = TrainBatches(cfg, cache).batch_at(5)
    parts = [TrainBatches(cfg, cache, shard=(r * 2, r * 2 + 2)).batch_at(5) for r in range(2)]
    for i in range(2):
        assert torch.equal(torch.cat([p[i] for p in parts]), whole[i])
        assert not torch.equal(parts[0][i], parts[1][i])


def test_devices_must_split_the_batch_and_are_not_part_of_the_computation():
    with pytest.raises(
        UserError, match=r"train.devices=3: the global batch data.batch_size=4 .* choose one of 1, 2, 4"
    ):
        tiny(**{"train.devices": 3})
    with pytest.raises(UserError, match="train.devices=0"):
        tiny(**{"train.devices": 0})
    assert "train.devices" in NOT_COMPUTATION  # a run may resume under another device count, like train.device


@pytest.mark.slow
def test_two_ranks_train_what_one_process_trains_esrgan_without_dp(tmp_path):
    """RaGAN (global means), VGG loss alone (mu=inf): 2 ranks x batch 2 == 1 process x batch 4."""
    cfg = dict(arch="esrgan", mu="inf", **{"train.iters": 3})
    one = train(tiny(**cfg), tmp_path / "one", tmp_path / "cache", progress=False)
    two = train(tiny(**cfg, **{"train.devices": 2}), tmp_path / "two", tmp_path / "cache", progress=False)
    assert one["status"] == two["status"] == "complete"
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert json.loads((tmp_path / "two" / "result.json").read_text()) == two
    assert_same_training(tmp_path / "one", tmp_path / "two")
    ledger = [json.loads(line) for line in (tmp_path / "two" / "ledger.jsonl").read_text().splitlines()]
    assert [line["devices"] for line in ledger] == [2]  # one line, by rank 0


RANKS = """
import sys
from pathlib import Path
from trainer.config import build_config
from trainer.train import train

if __name__ == "__main__":
    cfg = build_config({k: v for k, v in (a.split("=", 1) for a in sys.argv[3:])})
    print(train(cfg, Path(sys.argv[1]), Path(sys.argv[2]), progress=False)["status"])
"""


@pytest.mark.slow
def test_a_killed_two_rank_run_resumes_to_the_single_process_result(tmp_path):
    """SRGAN with the DP loss (global zeta), 2 ranks: killed (SIGKILL, launcher and ranks) after a checkpoint,
    resumed on 2 ranks; losses at every step and final weights as one uninterrupted process on the batch."""
    cfg = {"mu": 0.5, "beta": "beta1_3", "train.iters": 4, "train.ckpt_every": 2, "train.milestones": [3]}
    one = train(tiny(**cfg), tmp_path / "one", tmp_path / "cache", progress=False)
    assert one["status"] == "complete"

    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    args = [
        sys.executable,
        str(script),
        str(tmp_path / "two"),
        str(tmp_path / "cache"),
        *(f"{k}={v}" for k, v in {**TINY, **cfg, "train.devices": 2}.items()),
    ]
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckpt, deadline = tmp_path / "two" / "ckpt" / "last.pt", time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-run
    proc.wait()
    assert ckpt.exists() and not (tmp_path / "two" / "result.json").exists(), proc.stdout.read().decode()[-3000:]

    two = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert two.stdout.strip().splitlines()[-1] == "complete", two.stderr[-3000:]
    result = json.loads((tmp_path / "two" / "result.json").read_text())
    assert result["world_size"] == 2 and result["iters"] == 4
    assert_same_training(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_sweeper_train_on_two_ranks_records_the_world_size(tmp_path):
    """`sweeper train arch=srgan mu=0.5 beta=beta3_6 preset=smoke train.devices=2`: 2 gloo ranks on this CPU,
    world_size 2 in result.json and in the MLflow run."""
    from cluster_helpers import env_for, sweeper, tiny
    from mlflow import MlflowClient

    ws = tmp_path / "ws"
    done = sweeper(
        [
            "train",
            "arch=srgan",
            "mu=0.5",
            "beta=beta3_6",
            *tiny("model.num_blocks=1"),
            "train.devices=2",
            f"workspace={ws}",
        ],
        env_for(tmp_path),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((ws / "trials" / "train" / "run" / "0" / "result.json").read_text())
    assert result["status"] == "complete" and result["world_size"] == 2
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert run.data.params["world_size"] == "2" and run.data.params["train.amp"] == "False"


def rank_pids(marker: str) -> list[int]:
    """The ranks of this test's trial: processes spawned by the elastic agent (multiprocessing's spawn_main; the
    agent sets RANK in them after the start, so it is not in /proc) with the study folder `marker` in their
    environment, oldest first."""
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            env, cmd = (proc / "environ").read_bytes(), (proc / "cmdline").read_bytes()
        except OSError:
            continue  # gone, or not ours
        if f"SWEEPER_STUDIES={marker}\0".encode() in env and b"spawn_main" in cmd and b"resource_tracker" not in cmd:
            out.append(int(proc.name))
    return sorted(out)


@pytest.mark.slow
def test_a_study_trial_whose_rank_is_killed_resumes_without_spending_a_retry(tmp_path):
    """Issue 21: a `train.devices=2` trial of a local study whose rank 1 is killed (SIGKILL) after its first
    checkpoint: the launcher stops rank 0, the attempt is the machine's fault (no retry spent: max_retries=0),
    the next attempt resumes from the checkpoint, and the point is COMPLETE once, on 2 ranks, no step trained
    twice, one MLflow run."""
    import optuna
    from cluster_helpers import REPO, env_for, sweeper_args, tiny, write_study
    from mlflow import MlflowClient

    env = env_for(tmp_path) | {"OMP_NUM_THREADS": "1"}
    write_study(tmp_path, "ddp_kill", ["0.5"])
    ws = tmp_path / "ws"
    settings = tiny("train.iters=40", "train.ckpt_every=2", "train.val_every=40", "train.log_every=1",
                    "train.from_scratch=true", "model.num_blocks=1")  # fmt: skip
    run = sweeper_args(["run", "study=ddp_kill", f"workspace={ws}", *settings, "train.devices=2", "max_retries=0"])
    proc = subprocess.Popen(run, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed: list[int] = []
    deadline = time.monotonic() + 300
    while not killed and proc.poll() is None and time.monotonic() < deadline:
        if any(ws.glob("trials/**/ckpt/last.pt")):
            killed = rank_pids(env["SWEEPER_STUDIES"])[-1:]  # the younger: rank 1
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=600)
    assert killed, "no rank was found to kill"
    assert proc.returncode == 0, err[-3000:]
    assert "was killed (signal SIGKILL)" in out + err and "no retry spent" in out + err, out[-3000:]
    storage = f"sqlite:///{ws / 'optuna.db'}"
    trials = optuna.load_study(study_name="ddp_kill.mu", storage=storage).get_trials(deepcopy=False)
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "FAIL"], [(t.state, t.user_attrs) for t in trials]
    (done,) = [t for t in trials if t.state.name == "COMPLETE"]
    trial_dir = Path(done.user_attrs["trial_dir"])
    steps = [r["step"] for r in train_records(trial_dir)]
    assert steps == list(range(1, 41)), steps  # resumed from the checkpoint: nothing counted twice
    assert json.loads((trial_dir / "result.json").read_text())["world_size"] == 2
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("ddp_kill").experiment_id], "tags.`sweeper.kind` = 'trial'"
    )
    assert [r.info.run_id for r in runs] == [done.user_attrs["mlflow_run_id"]]
