"""Every numba.cuda kernel compiles for a real GPU (PTX for sm_90), with no GPU here.

The simulator (NUMBA_ENABLE_CUDASIM) runs kernels as Python and types nothing, so code it
accepts can still fail numba.cuda's compiler: a shared array shaped by an expression
(`MAX_BINS + 1`) passed every simulated test and failed on the first real GPU. This test
runs numba-cuda's type inference and NVVM on each kernel, for the argument types the
wrappers in cuda_kernels pass. Needs numba-cuda with NVVM and NVRTC (dev install); skipped
only when one of those libraries is absent: a compiler that is present and fails (a numba-cuda
broken by a newer numpy) fails the tests.
"""

from __future__ import annotations

import types

import pytest

pytest.importorskip("numba_cuda")

from numba import config, cuda  # after the skip: numba-cuda's numba.cuda

if config.ENABLE_CUDASIM:  # pragma: no cover
    pytest.skip("the simulator compiles nothing", allow_module_level=True)

# C-contiguous device arrays, 1-D and 2-D
I16, F32, F64, I64 = "int16[::1]", "float32[::1]", "float64[::1]", "int64[::1]"
F32_2, F64_2, I64_2 = "float32[:, ::1]", "float64[:, ::1]", "int64[:, ::1]"

# kernel -> argument-type lists the wrappers launch it with
SIGNATURES = {
    "_delta_stats_kernel": [
        f"void({src}, {src}, int64, {F32}, int64, {F64}, {I64}, {F32})"
        for src in (I16, F32, F64)],
    "_forward_kernel": [f"void({F32}, {I64}, {I64}, {F32_2}, {F32_2})"],
    "_grad_values_kernel": [f"void({F32_2}, {I64}, {I64}, {F32_2}, {F32})"],
    "_scatter_rows_kernel": [f"void({F32}, {I64}, {I64}, {I64}, {F32_2}, {out})"
                             for out in (F32_2, F64_2)],
    "_sum_squares_kernel": [f"void({F32}, {I64}, {F64})"],
    "_topn_kernel": [f"void({F32_2}, {I64_2}, {I64_2}, {I64}, {I64}, {I64}, {F32}, {I64}, {I64})"],
}


def missing_compiler() -> str | None:
    """Why numba-cuda has no compiler here (NVVM or NVRTC library absent), or None when both load."""
    from numba.cuda.cudadrv import nvrtc, nvvm

    if not nvvm.is_available():
        return "NVVM (libnvvm) is not installed"
    try:
        nvrtc._get_nvrtc_version()
    except (OSError, RuntimeError, ImportError) as exc:
        return f"NVRTC is not installed: {str(exc).splitlines()[0]}"
    return None


@pytest.fixture(scope="module")
def kernels():
    reason = missing_compiler()
    if reason is not None:
        pytest.skip(f"numba-cuda cannot compile here: {reason}")
    # with both libraries present a trivial kernel must compile: any failure is a failure
    cuda.compile_ptx(lambda a: None, "void(float32[::1])", cc=(9, 0))
    from mechdiff.kernels import cuda_kernels

    return cuda_kernels


def test_every_kernel_is_listed(kernels):
    launched = {name for name, obj in vars(kernels).items()
                if type(obj).__name__ == "CUDADispatcher" and not obj.targetoptions.get("device")}
    assert launched == set(SIGNATURES)


@pytest.mark.parametrize("name,signature",
                         [(n, s) for n, sigs in SIGNATURES.items() for s in sigs])
def test_kernel_compiles_to_ptx(kernels, name, signature, monkeypatch):
    # device functions compile for the current GPU's compute capability: say sm_90
    from numba.cuda import dispatcher

    monkeypatch.setattr(dispatcher, "get_current_device",
                        lambda: types.SimpleNamespace(compute_capability=(9, 0)))
    ptx, _ = cuda.compile_ptx(getattr(kernels, name).py_func, signature, cc=(9, 0))
    assert ".entry" in ptx and "sm_90" in ptx
