"""Hot-path kernels: torch references, numba CPU loops and numba.cuda kernels.

`resolve(name, device)` picks one implementation per device; the environment variable
MECHDIFF_KERNELS=reference|numba|cuda forces one. Nothing is compiled at import.
"""

from mechdiff.kernels.decode import SparseDecode, sparse_decode
from mechdiff.kernels.delta import (
           DeltaStats,
           delta_stats,
           delta_stats_reference,
           hist_edges,
)
from mechdiff.kernels.resolver import cuda_available, kernel_names, resolve
from mechdiff.kernels.scaling import latent_scaling_sums
from mechdiff.kernels.topn import TopN

__all__ = [
           "DeltaStats",
           "SparseDecode",
           "TopN",
           "cuda_available",
           "delta_stats",
           "delta_stats_reference",
           "hist_edges",
           "kernel_names",
           "latent_scaling_sums",
           "resolve",
           "sparse_decode",
]
