"""Compare every numba.cuda kernel with its torch reference on tiny awkward inputs.

Run as a script by test_kernels_cuda.py with NUMBA_ENABLE_CUDASIM=1 (the simulator must
be switched on before numba.cuda is first imported, hence a separate process) or on a
real GPU with --device cuda. Exits non-zero on the first mismatch.
"""

import argparse
import math
import os

import numpy as np
import torch

from mechdiff.kernels import cuda_kernels as ck
from mechdiff.kernels import decode, delta_stats, resolve, scaling, topn
from mechdiff.kernels.delta import delta_stats_reference


def check_delta_stats(device: str) -> None:
    gen = torch.Generator().manual_seed(0)
    for n, dtype in [(0, torch.float32), (1, torch.bfloat16), (131, torch.float16),
                     (257, torch.bfloat16), (67, torch.float32)]:
        base = torch.randn(n, generator=gen)
        ft = base + 1e-2 * torch.randn(n, generator=gen)
        if n > 5:
            ft[::4] = base[::4]
            base[1], ft[2], ft[3], base[4] = math.nan, math.inf, math.nan, -math.inf
        base, ft = base.to(dtype).to(device), ft.to(dtype).to(device)
        d_got, d_want = torch.full((n,), math.nan, device=device), torch.empty(n)
        got = ck.delta_stats_cuda(base, ft, 16, out=d_got)
        want = delta_stats_reference(base, ft, 16, out=d_want)
        assert torch.equal(d_got.cpu(), d_want), ("delta output", n, dtype)
        assert ck.delta_stats_cuda(base, ft, 16).n == n  # statistics only, no output
        for name in ("n", "nan_base", "inf_base", "nan_ft", "inf_ft", "n_excluded", "n_zero"):
            assert getattr(got, name) == getattr(want, name), (name, n, dtype)
        for name in ("sum_b2", "sum_f2", "sum_bf", "sum_d2", "max_abs_d"):
            assert math.isclose(getattr(got, name), getattr(want, name), rel_tol=1e-12), name
        np.testing.assert_array_equal(got.hist, want.hist)
    extremes = torch.tensor([torch.finfo(torch.bfloat16).max, -0.0, 1e-40]).bfloat16()
    got = ck.delta_stats_cuda(extremes.to(device), (-extremes).to(device), 8)
    assert got.max_abs_d == 2 * torch.finfo(torch.bfloat16).max and got.n_zero == 1


def csr(counts, n_latents, seed):
    gen = torch.Generator().manual_seed(seed)
    idx = [torch.randperm(n_latents, generator=gen)[:c] for c in counts]
    offsets = torch.tensor([0, *np.cumsum(counts)], dtype=torch.int64)
    indices = torch.cat(idx).long() if counts else torch.zeros(0, dtype=torch.int64)
    return torch.randn(int(offsets[-1]), generator=gen), indices, offsets


def check_sparse(device: str) -> None:
    for counts, n_latents, dim in [([3, 0, 2, 1], 7, 5), ([0, 0], 3, 2), ([1], 1, 1)]:
        v, idx, off = (t.to(device) for t in csr(counts, n_latents, seed=dim))
        W = torch.randn(n_latents, dim, device=device)
        g = torch.randn(len(counts), dim, device=device)
        tol = {"rtol": 1e-5, "atol": 1e-5}
        torch.testing.assert_close(ck.decode_forward_cuda(v, idx, off, W),
                                   decode.decode_forward_reference(v, idx, off, W), **tol)
        got = ck.decode_backward_cuda(g, v, idx, off, W)
        want = decode.decode_backward_reference(g, v, idx, off, W)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, **tol)
        Y = torch.randn(len(counts), dim, device=device)
        got = ck.latent_scaling_cuda(v, idx, off, Y, n_latents)
        want = scaling.latent_scaling_reference(v, idx, off, Y, n_latents)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def check_topn(device: str) -> None:
    rng = np.random.default_rng(0)
    m, n_latents, n = 60, 5, 3
    lat, doc, pos = rng.integers(0, n_latents, m), rng.integers(0, 9, m), rng.integers(0, 4, m)
    act = rng.integers(0, 4, m).astype(np.float32)  # ties broken by (doc, pos)
    results = []
    for update in (ck.topn_update_cuda, topn.topn_update_reference):
        state = topn.TopN(n_latents, n, device=device)
        state._update = update
        for s in range(0, m, 25):
            state.update(lat[s:s + 25], act[s:s + 25], doc[s:s + 25], pos[s:s + 25])
        results.append(state.result())
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


def check_env_selects_cuda(device: str) -> None:
    os.environ["MECHDIFF_KERNELS"] = "cuda"
    try:
        assert resolve("delta_stats", device) is ck.delta_stats_cuda
        stats = delta_stats(torch.tensor([1.0, 2.0], device=device),
                            torch.tensor([1.0, 4.0], device=device))
        assert (stats.sum_d2, stats.n_zero, stats.max_abs_d) == (4.0, 1, 2.0)
    finally:
        del os.environ["MECHDIFF_KERNELS"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    device = parser.parse_args().device
    check_delta_stats(device)
    check_sparse(device)
    check_topn(device)
    check_env_selects_cuda(device)
    print("cuda kernels agree with the references")
