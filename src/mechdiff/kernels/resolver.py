"""Choose one implementation of each hot path per device.

Every kernel exists as a torch reference, a numba CPU loop and a numba.cuda kernel.
`resolve` picks numba on CPU and numba.cuda on a GPU (torch reference where numba.cuda
cannot run); `MECHDIFF_KERNELS=reference|numba|cuda` forces one everywhere, which is
how tests run the CUDA kernels under `NUMBA_ENABLE_CUDASIM=1` on CPU tensors.
Implementations are imported only when resolved, so importing mechdiff compiles nothing
and never imports numba.cuda.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable

ENV_VAR = "MECHDIFF_KERNELS"
BACKENDS = ("reference", "numba", "cuda")

# name -> backend -> "module:function", modules relative to mechdiff.kernels
_REGISTRY: dict[str, dict[str, str]] = {
    "delta_stats": {
        "reference": "delta:delta_stats_reference",
        "numba": "delta:delta_stats_numba",
        "cuda": "cuda_kernels:delta_stats_cuda",
    },
    "sparse_decode_forward": {
        "reference": "decode:decode_forward_reference",
        "numba": "decode:decode_forward_numba",
        "cuda": "cuda_kernels:decode_forward_cuda",
    },
    "sparse_decode_backward": {
        "reference": "decode:decode_backward_reference",
        "numba": "decode:decode_backward_numba",
        "cuda": "cuda_kernels:decode_backward_cuda",
    },
    "latent_scaling_sums": {
        "reference": "scaling:latent_scaling_reference",
        "numba": "scaling:latent_scaling_numba",
        "cuda": "cuda_kernels:latent_scaling_cuda",
    },
    "topn_update": {
        "reference": "topn:topn_update_reference",
        "numba": "topn:topn_update_numba",
        "cuda": "cuda_kernels:topn_update_cuda",
    },
}


def kernel_names() -> tuple[str, ...]:
    """Names `resolve` accepts."""
    return tuple(_REGISTRY)


@functools.cache
def cuda_available() -> bool:
    """True when torch sees a CUDA GPU and numba.cuda can launch kernels on it."""
    import torch

    if not torch.cuda.is_available():
        return False
    try:
        from numba import cuda
    except ImportError:
        return False
    return bool(cuda.is_available())


@functools.cache
def prefer_workqueue_threads() -> None:
    """Use numba's workqueue threads unless the user chose a layer (NUMBA_THREADING_LAYER).

    Why: numba's default OpenMP pool and torch's OpenMP pool both spin-wait between
    parallel regions; alternating torch ops and numba kernels on a small machine made
    them starve each other (delta_stats ran ~6x slower, benchmarks/bench_kernels.py).
    Takes effect only if no numba parallel kernel has run yet in this process.
    """
    if "NUMBA_THREADING_LAYER" not in os.environ:
        import numba

        numba.config.THREADING_LAYER = "workqueue"


def backend_for(device: str) -> str:
    """The backend `resolve` uses for `device` ("cpu", "cuda", "cuda:1", ...)."""
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            from mechdiff.errors import UsageError

            raise UsageError(f"{ENV_VAR}={forced!r} is not one of {', '.join(BACKENDS)}; "
                             f"unset it or pick one of those")
        return forced
    if str(device).startswith("cuda"):
        return "cuda" if cuda_available() else "reference"
    return "numba"


def resolve(name: str, device: str) -> Callable:
    """The implementation of kernel `name` to use for tensors on `device`.

    Args:
        name: one of `kernel_names()`.
        device: torch device string of the tensors the kernel will see.

    Returns:
        The chosen function (all backends of one name share a signature).
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown kernel {name!r}; known: {', '.join(_REGISTRY)}")
    backend = backend_for(device)
    if backend == "numba":
        prefer_workqueue_threads()
    module_name, func_name = _REGISTRY[name][backend].split(":")
    module = importlib.import_module(f"mechdiff.kernels.{module_name}")
    return getattr(module, func_name)
