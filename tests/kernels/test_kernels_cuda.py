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
def test_resolver_uses_cuda_kernels_for_gpu_tensors(monkeypatch):
    # no MECHDIFF_KERNELS: a CUDA tensor alone must route delta_stats to the numba.cuda kernel
    from mechdiff.kernels import cuda_kernels, delta_stats, delta_stats_reference

    monkeypatch.delenv("MECHDIFF_KERNELS", raising=False)
    calls = []
    kernel = cuda_kernels.delta_stats_cuda
    monkeypatch.setattr(cuda_kernels, "delta_stats_cuda", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(1000, generator=gen).bfloat16()
    ft = base.clone()
    ft[:300] += 0.1
    got = delta_stats(base.cuda(), ft.cuda())
    assert calls == [1]
    want = delta_stats_reference(base, ft, 64)
    assert got.n_zero == want.n_zero > 600 and (got.hist == want.hist).all()
    assert got.sum_d2 == pytest.approx(want.sum_d2, rel=1e-9)
