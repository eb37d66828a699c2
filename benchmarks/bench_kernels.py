"""Hot-path kernels against straightforward torch/numpy baselines, in the same process.

Rows (issue 4 targets in `target`; the GPU rows are in bench_gpu.py):
- delta_stats/bf16: fused one-pass statistics vs torch upcast, subtract, norms, dot, max,
  non-finite counts (the baseline computes no histogram, ours does); and vs a numpy copy
  of the same input bytes (ratio = fraction of copy bandwidth we reach; GB/s count the
  input bytes read on both sides, writes not counted, as the row says).
- sparse_decode/fwd+bwd: CSR decode + backward vs the faster of two plain torch forms of
  the same output and gradients: ``F.embedding_bag(mode="sum", per_sample_weights=...)``
  and the dense ``f @ W_dec`` (both timed, in turns with ours; no copies inside the timing).
- topn/update: per-latent heaps vs sorting each chunk (with the kept state) by latent.
- latent_scaling/sums: per-latent sums vs torch index_add_ in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from harness import make_row, time_alternating, time_call

from mechdiff.kernels import TopN, delta_stats, latent_scaling_sums, sparse_decode
from mechdiff.kernels.scaling import latent_scaling_reference


def run(quick: bool) -> list[dict]:
    """Run all kernel benchmarks; `quick` shrinks sizes for CI smoke runs."""
    repeat = 3
    return [*bench_delta_stats(quick, repeat), bench_sparse_decode(quick, repeat),
            bench_topn(quick, repeat), bench_latent_scaling(quick, repeat)]


def torch_delta_sequence(base: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The straightforward torch baseline of delta_stats: upcast, subtract, norms, max, counts."""
    b, f = base.float(), ft.float()
    d = f - b
    return (torch.linalg.vector_norm(b), torch.linalg.vector_norm(f), torch.dot(b, f),
            torch.linalg.vector_norm(d), d.abs().max(), (~torch.isfinite(b)).sum(),
            (~torch.isfinite(f)).sum())


def bench_delta_stats(quick: bool, repeat: int) -> list[dict]:
    n = 1 << (22 if quick else 25)
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(n, generator=gen).bfloat16()
    ft = (base.float() + 1e-3 * torch.randn(n, generator=gen)).bfloat16()

    def torch_sequence():
        return torch_delta_sequence(base, ft)

    # the copy reads the very bytes delta_stats reads, in turns with it (same cache state)
    src = [t.view(torch.int16).numpy() for t in (base, ft)]
    dst = [np.empty_like(a) for a in src]

    def copy():
        for a, out in zip(src, dst, strict=True):
            np.copyto(out, a)

    torch_s = time_call(torch_sequence, repeat=repeat)
    ours_s, copy_s = time_alternating([lambda: delta_stats(base, ft), copy], repeat=3 * repeat)
    gbytes = sum(a.nbytes for a in src) / 1e9
    name = f"delta_stats/bf16/{n >> 20}M"
    return [
        make_row(name, "torch upcast+sub+norms+max", torch_s, ours_s, target=">=3",
                 elements=n),
        make_row(f"{name}/bandwidth", "numpy copy of the input bytes", copy_s, ours_s,
                 target=">=0.5", ours_GBps=gbytes / ours_s, copy_GBps=gbytes / copy_s,
                 bytes_counted=BYTES_COUNTED),
    ]


@dataclass(frozen=True)
class DecodeSizes:
    """A BatchTopK-like batch: `active` distinct latents per row of a dictionary."""

    n_latents: int = 16384
    dim: int = 512
    active: int = 64
    batch: int = 4096


def csr_batch(sizes, seed: int) -> tuple[torch.Tensor, ...]:
    """(values[B*k], indices[B*k], offsets[B+1], W_dec[F, D]) on the CPU, seeded."""
    gen = torch.Generator().manual_seed(seed)
    k = sizes.active
    indices = torch.stack([torch.randperm(sizes.n_latents, generator=gen)[:k]
                           for _ in range(sizes.batch)]).reshape(-1)
    values = torch.rand(sizes.batch * k, generator=gen)
    offsets = torch.arange(0, sizes.batch * k + 1, k)
    W = torch.randn(sizes.n_latents, sizes.dim, generator=gen) / sizes.dim**0.5
    return values, indices, offsets, W


BYTES_COUNTED = "input bytes read (writes not counted), both sides"


def decode_contenders(values: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, W: torch.Tensor,
                      grad: torch.Tensor, n_latents: int) -> dict[str, Callable[[], tuple[torch.Tensor, ...]]]:
    """Forward + backward of the same sparse decode three ways: ours, embedding_bag, dense matmul.

    Each returns (output, grad of values, grad of W). Leaves are made once, outside what is
    timed; each call only clears their gradients.
    """
    batch, k = offsets.numel() - 1, values.numel() // (offsets.numel() - 1)
    rows = torch.arange(batch, device=values.device).repeat_interleave(k)
    f_dense = torch.zeros(batch, n_latents, device=values.device)
    f_dense[rows, indices] = values
    v, w, f = values.clone().requires_grad_(), W.clone().requires_grad_(), f_dense.requires_grad_()

    def run(forward: Callable[[], torch.Tensor], value_leaf: torch.Tensor) -> tuple[torch.Tensor, ...]:
        value_leaf.grad, w.grad = None, None
        out = forward()
        out.backward(grad)
        g_v = value_leaf.grad if value_leaf is v else value_leaf.grad[rows, indices]
        return out, g_v, w.grad

    return {
        "ours": lambda: run(lambda: sparse_decode(v, indices, offsets, w), v),
        "embedding_bag": lambda: run(lambda: F.embedding_bag(indices, w, offsets[:-1], mode="sum",
                                                             per_sample_weights=v), v),
        "dense": lambda: run(lambda: f @ w, f),
    }


def decode_row(name: str, contenders: dict[str, Callable], repeat: int, wrap: Callable = lambda fn: fn,
               **extra: object) -> dict:
    """Time ours against embedding_bag and dense in turns; the baseline is the faster of the two."""
    want = contenders["embedding_bag"]()
    got = contenders["ours"]()
    err = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in
              zip((t.detach() for t in got), (t.detach() for t in want), strict=True))
    ours_s, bag_s, dense_s = time_alternating([wrap(contenders[k]) for k in ("ours", "embedding_bag", "dense")],
                                              repeat=repeat)
    best = "embedding_bag" if bag_s <= dense_s else "dense"
    return make_row(name, f"faster of torch embedding_bag / dense f @ W_dec ({best}), autograd",
                    min(bag_s, dense_s), ours_s, embedding_bag_s=bag_s, dense_s=dense_s,
                    max_rel_err_vs_embedding_bag=err, **extra)


def bench_sparse_decode(quick: bool, repeat: int) -> dict:
    sizes = DecodeSizes(batch=512 if quick else 4096)
    values, indices, offsets, W = csr_batch(sizes, seed=1)
    grad = torch.randn(sizes.batch, sizes.dim, generator=torch.Generator().manual_seed(11))
    contenders = decode_contenders(values, indices, offsets, W, grad, sizes.n_latents)
    return decode_row(f"sparse_decode/fwd+bwd/B{sizes.batch}", contenders, 3 * repeat, target=">=1",
                      dict_size=sizes.n_latents, d=sizes.dim, active=sizes.active)


class SortingTopN:
    """Baseline: per chunk, sort kept + new entries by activation then latent, keep n."""

    def __init__(self, n_latents: int, n: int, device: str = "cpu") -> None:
        self.n_latents, self.n, self.device = n_latents, n, device
        self.lat = torch.zeros(0, dtype=torch.int64, device=device)
        self.act = torch.zeros(0, device=device)
        self.doc = torch.zeros(0, dtype=torch.int64, device=device)
        self.pos = torch.zeros(0, dtype=torch.int64, device=device)

    def update(self, lat, act, doc, pos) -> None:
        lat, act, doc, pos = (torch.cat([a, torch.as_tensor(b, device=self.device)]) for a, b in
                              ((self.lat, lat), (self.act, act), (self.doc, doc),
                               (self.pos, pos)))
        order = torch.sort(act, descending=True, stable=True).indices
        order = order[torch.sort(lat[order], stable=True).indices]
        counts = torch.bincount(lat, minlength=self.n_latents)
        starts = (torch.cumsum(counts, 0) - counts).repeat_interleave(counts)
        rank = torch.arange(order.numel(), device=self.device) - starts
        keep = order[rank < self.n]
        self.lat, self.act, self.doc, self.pos = lat[keep], act[keep], doc[keep], pos[keep]


def bench_topn(quick: bool, repeat: int) -> dict:
    n_latents, n, per_chunk = 16384, 16, 4096 * 64
    n_chunks = 2 if quick else 8
    rng = np.random.default_rng(2)
    chunks = [(rng.integers(0, n_latents, per_chunk), rng.exponential(1.0, per_chunk).astype(np.float32),
               np.full(per_chunk, c, np.int64), rng.integers(0, 4096, per_chunk))
              for c in range(n_chunks)]

    def stream(tracker_cls):
        tracker = tracker_cls(n_latents, n)
        for chunk in chunks:
            tracker.update(*chunk)

    baseline_s = time_call(lambda: stream(SortingTopN), repeat=repeat)
    ours_s = time_call(lambda: stream(TopN), repeat=repeat)
    return make_row(f"topn/update/{n_chunks}x{per_chunk}", "torch sort per chunk by latent",
                    baseline_s, ours_s, target=">=20", n_latents=n_latents, n=n)


def bench_latent_scaling(quick: bool, repeat: int) -> dict:
    sizes = DecodeSizes(batch=512 if quick else 4096)
    values, idx, offsets, _ = csr_batch(sizes, seed=3)
    batch, n_latents, dim, k = sizes.batch, sizes.n_latents, sizes.dim, sizes.active
    Y = torch.randn(batch, dim, generator=torch.Generator().manual_seed(13))
    baseline_s = time_call(lambda: latent_scaling_reference(values, idx, offsets, Y, n_latents),
                           repeat=repeat)
    ours_s = time_call(lambda: latent_scaling_sums(values, idx, offsets, Y, n_latents=n_latents),
                       repeat=repeat)
    return make_row(f"latent_scaling/sums/B{batch}", "torch index_add_ float64", baseline_s,
                    ours_s, target="none", dict_size=n_latents, d=dim, active=k)
