"""benchmarks/gpu.py on a machine without a GPU: it says so and skips; with --cpu its measuring code runs at
smoke shapes (every section a GPU run prints except DDP, which needs two GPUs)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the script would measure it")
def test_without_a_gpu_it_skips():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "no GPU: skipped"


@pytest.mark.slow
def test_its_measuring_code_runs_on_the_cpu():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu", "--steps", "1", "--warmup", "1", "--rounds", "1", "--pack", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for line in (
        "esrgan-dp: batch 2",
        "srgan-dp proxy: batch 2",
        "fp32 + channels_last",
        "bf16 + channels_last / fp32 = ",
        "1 packed: ",
        "packed / one after another = ",
    ):
        assert line in out.stdout, out.stdout
