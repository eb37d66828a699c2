"""numba.cuda kernels: under the CUDA simulator here, on a real GPU where there is one."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mechdiff.kernels import cuda_available

CHECK = Path(__file__).with_name("cudasim_check.py")


def run_check(device: str, simulate: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("MECHDIFF_KERNELS", None)
    if simulate:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    return subprocess.run([sys.executable, str(CHECK), "--device", device], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_cuda_kernels_match_references_under_simulator():
    # also checks that MECHDIFF_KERNELS=cuda routes the public API to these kernels
    done = run_check("cpu", simulate=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "agree" in done.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU visible to torch and numba")
def test_cuda_kernels_on_real_gpu_with_device_tensors():
    done = run_check("cuda", simulate=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU visible to torch and numba")
def test_resolver_uses_cuda_kernels_for_gpu_tensors():
    from mechdiff.kernels import delta_stats

    base = torch.randn(1000, device="cuda").bfloat16()
    assert delta_stats(base, base).n_zero == 1000
