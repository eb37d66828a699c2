"""The resolver: per-device choice, the MECHDIFF_KERNELS override, unknown names."""

import pytest

from mechdiff.errors import UsageError
from mechdiff.kernels import cuda_available, kernel_names, resolve
from mechdiff.kernels.delta import delta_stats_numba, delta_stats_reference


def test_cpu_gets_numba_and_env_forces_reference(monkeypatch):
    monkeypatch.delenv("MECHDIFF_KERNELS", raising=False)
    assert resolve("delta_stats", "cpu") is delta_stats_numba
    monkeypatch.setenv("MECHDIFF_KERNELS", "reference")
    assert resolve("delta_stats", "cpu") is delta_stats_reference


@pytest.mark.skipif(cuda_available(), reason="checks the fallback without a GPU")
def test_cuda_device_without_gpu_falls_back_to_reference(monkeypatch):
    monkeypatch.delenv("MECHDIFF_KERNELS", raising=False)
    assert resolve("delta_stats", "cuda:0") is delta_stats_reference


def test_cuda_tensors_get_the_cuda_kernels_without_forcing(monkeypatch):
    # a machine where torch and numba.cuda see a GPU (pretended here; real in test_kernels_cuda.py)
    from mechdiff.kernels import cuda_kernels, resolver

    monkeypatch.delenv("MECHDIFF_KERNELS", raising=False)
    monkeypatch.setattr(resolver, "cuda_available", lambda: True)
    assert resolve("delta_stats", "cuda:1") is cuda_kernels.delta_stats_cuda
    assert all(resolve(name, "cuda").__module__ == cuda_kernels.__name__ for name in kernel_names())
    assert resolve("delta_stats", "cpu") is delta_stats_numba  # CPU tensors keep the CPU loops


def test_every_name_resolves_on_cpu(monkeypatch):
    monkeypatch.delenv("MECHDIFF_KERNELS", raising=False)
    for backend in ("reference", "numba"):
        monkeypatch.setenv("MECHDIFF_KERNELS", backend)
        assert all(callable(resolve(name, "cpu")) for name in kernel_names())


def test_bad_names_are_rejected(monkeypatch):
    with pytest.raises(KeyError, match="unknown kernel"):
        resolve("nope", "cpu")
    monkeypatch.setenv("MECHDIFF_KERNELS", "fast")
    with pytest.raises(UsageError, match="MECHDIFF_KERNELS"):
        resolve("delta_stats", "cpu")
