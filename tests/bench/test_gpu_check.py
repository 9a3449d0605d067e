"""bench/gpu_check.sh fails clearly, before any work, where torch sees no CUDA device (the GPU run itself and its
--cpu form are run by hand: minutes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_the_gpu_check_stops_at_once_without_cuda():
    script = ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--python", sys.executable, "--cache", "/nonexistent"]
    result = subprocess.run(script, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no CUDA device" in result.stderr and "--cpu" in result.stderr
    assert "building" not in result.stdout  # nothing was built or started
