"""numba.cuda kernels against torch on the same GPU, each checked against its reference.

Runs only where `cuda_available()` (it returns no rows elsewhere). Every row first checks
the kernel against the torch reference at the benchmark's own (real) size, on fresh
random inputs, and records the result in `agrees` and the largest relative error; then
times both with the device synchronized after each call (median of `REPEAT`).

Rows:
- gpu/delta_stats: fused statistics vs the torch sequence; and vs a device-to-device copy
  of the same input bytes (ratio = fraction of copy bandwidth reached; GB/s count the input
  bytes read on both sides, writes not counted); and vs `delta_stats_torch`, the torch
  statistics the weight diff runs on a GPU today (which of the two the diff should call).
- gpu/sparse_decode: CSR decode forward+backward vs the faster of torch embedding_bag and
  dense f @ W_dec with autograd (see bench_kernels.decode_contenders).
- gpu/topn: per-latent heaps vs sorting each chunk (with the kept state) by latent.
- gpu/latent_scaling: per-latent sums vs torch index_add_ in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from bench_kernels import (
    BYTES_COUNTED,
    DecodeSizes,
    SortingTopN,
    csr_batch,
    decode_contenders,
    decode_row,
    torch_delta_sequence,
)
from harness import make_row, time_alternating, time_call

from mechdiff.kernels import (
    TopN,
    cuda_available,
    decode,
    delta_stats,
    delta_stats_reference,
    scaling,
)
from mechdiff.kernels.delta_torch import delta_stats_torch

REPEAT = 10


@dataclass(frozen=True)
class GpuSizes(DecodeSizes):
    """The CPU rows' sizes, and 2^28 bf16 elements to fill the card for delta stats."""

    delta_elements: int = 1 << 28
    topn_chunks: int = 8
    topn_n: int = 16


def run(quick: bool) -> list[dict]:
    """All GPU rows, or none without a GPU; `quick` shrinks the sizes 16-fold."""
    if not cuda_available():
        return []
    sizes = GpuSizes(delta_elements=1 << 24, batch=256, topn_chunks=2) if quick else GpuSizes()
    return [*bench_delta_stats(sizes), bench_sparse_decode(sizes), bench_topn(sizes),
            bench_latent_scaling(sizes)]


def synced(fn: Callable[[], object], device: str = "cuda") -> Callable[[], object]:
    """fn followed by a device synchronize, so host timers see the device work."""
    def call():
        out = fn()
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        return out
    return call


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if str(device).startswith("cuda") else str(device)


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach().double()
    return float(torch.linalg.vector_norm(got - want) / max(float(torch.linalg.vector_norm(want)), 1e-300))


def bench_delta_stats(sizes: GpuSizes, device: str = "cuda") -> list[dict]:
    n = sizes.delta_elements
    gen = torch.Generator(device).manual_seed(0)
    base = torch.randn(n, device=device, generator=gen).bfloat16()
    ft = (base.float() + 1e-3 * torch.randn(n, device=device, generator=gen)).bfloat16()
    base[::1009], ft[7::2003] = math.nan, math.inf  # the non-finite paths are part of the work
    want = delta_stats_reference(base, ft, 64)
    exact, err = _compare_stats(delta_stats(base, ft), want)
    torch_exact, torch_err = _compare_stats(delta_stats_torch(base, ft, 64), want)

    dst = [torch.empty_like(base), torch.empty_like(ft)]

    def copy():
        dst[0].copy_(base)
        dst[1].copy_(ft)

    torch_s = time_call(synced(lambda: torch_delta_sequence(base, ft), device), repeat=REPEAT, warmup=2)
    ours_s, copy_s = time_alternating([synced(lambda: delta_stats(base, ft), device),
                                       synced(copy, device)], repeat=REPEAT, warmup=2)
    torch_path_s = time_call(synced(lambda: delta_stats_torch(base, ft, 64), device), repeat=REPEAT, warmup=2)
    gbytes = 2 * base.numel() * base.element_size() / 1e9
    name, card = f"gpu/delta_stats/bf16/{n >> 20}M", _device_name(device)
    check = {"agrees": exact and err < 1e-9, "max_rel_err_sums": err}
    return [make_row(name, "torch sequence on the GPU", torch_s, ours_s, device=card, **check),
            make_row(f"{name}/bandwidth", "device copy of the input bytes", copy_s, ours_s,
                     device=card, ours_GBps=gbytes / ours_s, copy_GBps=gbytes / copy_s,
                     bytes_counted=BYTES_COUNTED),
            make_row(f"{name}/diff_device_path", "delta_stats_torch, which the diff calls on a GPU today",
                     torch_path_s, ours_s, device=card, agrees=exact and torch_exact and torch_err < 1e-9,
                     max_rel_err_sums=max(err, torch_err))]


def _compare_stats(got, want) -> tuple[bool, float]:
    """(counts, histogram and max |d| identical; largest relative error of the four sums)."""
    exact = all(getattr(got, k) == getattr(want, k) for k in
                ("n", "nan_base", "inf_base", "nan_ft", "inf_ft", "n_excluded", "n_zero"))
    exact &= bool(np.array_equal(got.hist, want.hist)) and got.max_abs_d == want.max_abs_d
    err = max(abs(getattr(got, k) / getattr(want, k) - 1) for k in ("sum_b2", "sum_f2", "sum_bf", "sum_d2"))
    return exact, err


def bench_sparse_decode(sizes: GpuSizes, device: str = "cuda") -> dict:
    values, indices, offsets, W = (t.to(device) for t in csr_batch(sizes, seed=1))
    grad = torch.randn(sizes.batch, sizes.dim, device=device)
    v, w = values.clone().requires_grad_(), W.clone().requires_grad_()
    out = decode.sparse_decode(v, indices, offsets, w)
    out.backward(grad)
    want_out = decode.decode_forward_reference(values, indices, offsets, W)
    want_gv, want_gw = decode.decode_backward_reference(grad, values, indices, offsets, W)
    err = max(_rel_err(out, want_out), _rel_err(v.grad, want_gv), _rel_err(w.grad, want_gw))
    contenders = decode_contenders(values, indices, offsets, W, grad, sizes.n_latents)
    return decode_row(f"gpu/sparse_decode/fwd+bwd/B{sizes.batch}", contenders, REPEAT,
                      wrap=lambda fn: synced(fn, device), device=_device_name(device), agrees=err < 1e-5,
                      max_rel_err=err, dict_size=sizes.n_latents, d=sizes.dim, active=sizes.active)


def bench_topn(sizes: GpuSizes, device: str = "cuda") -> dict:
    per_chunk = sizes.batch * sizes.active
    gen = torch.Generator(device).manual_seed(2)
    chunks = [(torch.randint(0, sizes.n_latents, (per_chunk,), device=device, generator=gen),
               torch.empty(per_chunk, device=device).exponential_(generator=gen),
               torch.full((per_chunk,), c, device=device, dtype=torch.int64),
               torch.randint(0, 4096, (per_chunk,), device=device, generator=gen))
              for c in range(sizes.topn_chunks)]

    def stream(make):
        tracker = make()
        for chunk in chunks:
            tracker.update(*chunk)
        return tracker

    def make_ours():
        return TopN(sizes.n_latents, sizes.topn_n, device=device)

    ours = stream(make_ours)
    on_cpu = TopN(sizes.n_latents, sizes.topn_n)  # the numba CPU loop as the reference
    for chunk in chunks:
        on_cpu.update(*(t.cpu() for t in chunk))
    agrees = all(np.array_equal(a, b) for a, b in zip(ours.result(), on_cpu.result(), strict=True))
    baseline_s = time_call(synced(lambda: stream(
        lambda: SortingTopN(sizes.n_latents, sizes.topn_n, device)), device), repeat=REPEAT)
    ours_s = time_call(synced(lambda: stream(make_ours), device), repeat=REPEAT)
    return make_row(f"gpu/topn/update/{sizes.topn_chunks}x{per_chunk}",
                    "torch sort per chunk by latent, GPU", baseline_s, ours_s,
                    device=_device_name(device), agrees=agrees, n_latents=sizes.n_latents,
                    n=sizes.topn_n)


def bench_latent_scaling(sizes: GpuSizes, device: str = "cuda") -> dict:
    values, indices, offsets, _ = (t.to(device) for t in csr_batch(sizes, seed=3))
    Y = torch.randn(sizes.batch, sizes.dim, device=device)
    args = (values, indices, offsets, Y, sizes.n_latents)
    got = scaling.latent_scaling_sums(*args[:4], n_latents=sizes.n_latents)
    want = scaling.latent_scaling_reference(*args)
    err = max(_rel_err(a, b) for a, b in zip(got, want, strict=True))
    baseline_s = time_call(synced(lambda: scaling.latent_scaling_reference(*args), device),
                           repeat=REPEAT, warmup=2)
    ours_s = time_call(synced(lambda: scaling.latent_scaling_sums(
        *args[:4], n_latents=sizes.n_latents), device), repeat=REPEAT, warmup=2)
    return make_row(f"gpu/latent_scaling/sums/B{sizes.batch}", "torch index_add_ float64, GPU",
                    baseline_s, ours_s, device=_device_name(device), agrees=err < 1e-9,
                    max_rel_err=err, dict_size=sizes.n_latents, d=sizes.dim,
                    active=sizes.active)
