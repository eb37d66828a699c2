"""One pass of a trained crosscoder over the data: metrics, latent scaling sums and top contexts."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mechdiff.diffing.activations.cache import PairedActivations
from mechdiff.diffing.crosscoder.latent_scaling import (
    LatentScalingAccumulator,
    scaling_ratios,
)
from mechdiff.diffing.crosscoder.metrics import classify, decoder_cosine, relative_norm
from mechdiff.diffing.crosscoder.module import CrossCoder
from mechdiff.distributed import SINGLE, DistContext, all_gather, all_reduce
from mechdiff.kernels import TopN
from mechdiff.progress import new_bar


@dataclass(frozen=True)
class CrosscoderEval:
    """What the evaluation pass measured (inference sparsity: the running threshold)."""

    fve: tuple[float, ...]
    """Per-model fraction of variance explained (model 0 base, 1 ft)."""
    l0: float
    """Mean active latents per row."""
    dead_fraction: float
    """Fraction of latents that never fired."""
    latents: dict[str, np.ndarray]
    """Per-latent columns: latent, delta, cos, freq, mean_act, cls, nu_eps, nu_r."""
    top_act: np.ndarray
    """[F, n] strongest activations per latent (-inf: empty slot)."""
    top_doc: np.ndarray
    """[F, n] their documents (-1: empty)."""
    top_pos: np.ndarray
    """[F, n] their positions."""
    n_rows: int = 0
    """Rows evaluated (all ranks together)."""


class _Moments:
    """Streaming per-model error and variance sums for FVE."""

    def __init__(self, n_models: int, d_model: int) -> None:
        self.err = torch.zeros(n_models, dtype=torch.float64)
        self.sum_x = torch.zeros(n_models, d_model, dtype=torch.float64)
        self.sum_x2 = torch.zeros(n_models, dtype=torch.float64)
        self.n = 0

    def update(self, x_BMD: torch.Tensor, recon_BMD: torch.Tensor) -> None:
        x = x_BMD.double()
        self.err += (x - recon_BMD.double()).pow(2).sum(dim=(0, 2))
        self.sum_x += x.sum(dim=0)
        self.sum_x2 += x.pow(2).sum(dim=(0, 2))
        self.n += x.shape[0]

    def reduce(self, ctx: DistContext) -> None:
        """Sum the moments over ranks."""
        for tensor in (self.err, self.sum_x, self.sum_x2):
            all_reduce(ctx, tensor)
        self.n = int(all_reduce(ctx, torch.tensor([self.n], dtype=torch.int64))[0])

    def fve(self) -> tuple[float, ...]:
        var = self.sum_x2 - self.sum_x.pow(2).sum(dim=-1) / max(self.n, 1)
        return tuple(float(v) for v in 1 - self.err / var.clamp_min(1e-12))


@torch.no_grad()
def evaluate_crosscoder(
    module: CrossCoder, data: PairedActivations, *, batch: int = 4096, top_n: int = 10, progress: bool = True,
    ctx: DistContext = SINGLE,
) -> CrosscoderEval:
    """Measure a trained crosscoder on all rows of the data (storage order, one pass).

    Args:
        module: trained crosscoder (its input scale normalizes the raw rows).
        data: paired activations with provenance (under torchrun: this rank's share).
        batch: rows per forward.
        top_n: contexts kept per latent.
        progress: show a bar on stderr.
        ctx: the distributed context; sums are all-reduced and top examples merged, so
            every rank returns the evaluation of all ranks' rows together.

    Returns:
        Metrics, the per-latent table and top-activation provenance.
    """
    module.eval()
    n_latents = module.dict_size
    delta = relative_norm(module.W_dec_FMD).numpy()
    specific = np.nonzero((delta >= 0.9) | (delta <= 0.1))[0]
    scaling = LatentScalingAccumulator(torch.from_numpy(specific), n_latents, module.n_models, module.d_model)
    moments = _Moments(module.n_models, module.d_model)
    count = torch.zeros(n_latents, dtype=torch.float64)
    total = torch.zeros(n_latents, dtype=torch.float64)
    top = TopN(n_latents, top_n)
    for start, raw in new_bar(data.iter_rows(batch), total=-(-data.n_rows // batch), desc="evaluate", unit="batch",
                           disable=not (progress and ctx.is_main), file=sys.stderr):
        x_BMD = module.normalize(raw)
        recon_BMD, code = module(x_BMD)
        moments.update(x_BMD, recon_BMD)
        count += torch.bincount(code.indices, minlength=n_latents)
        total.index_add_(0, code.indices, code.values.double())
        scaling.update(code, x_BMD, recon_BMD)
        rows = start + _rows(code)
        top.update(code.indices.numpy(), code.values.numpy(), data.doc[rows], data.pos[rows])
    if ctx.active:
        moments.reduce(ctx)
        for tensor in (count, total, scaling.sum_f2, scaling.sum_f_err, scaling.sum_f_recon):
            all_reduce(ctx, tensor)
        top = _merged(all_gather(ctx, top.state_dict()))
    return _finish(module, moments.n, moments, count, total, scaling, specific, delta, top)


def _merged(states: list[dict[str, np.ndarray]]) -> TopN:
    merged = TopN.from_state(states[0])
    for state in states[1:]:
        merged = merged.merge(TopN.from_state(state))
    return merged


def _rows(code: Any) -> np.ndarray:
    return torch.repeat_interleave(torch.arange(code.n_rows), code.row_counts()).numpy()


def _finish(module: CrossCoder, n_rows: int, moments: _Moments, count: torch.Tensor, total: torch.Tensor,
            scaling: LatentScalingAccumulator, specific: np.ndarray, delta: np.ndarray, top: Any) -> CrosscoderEval:
    freq = (count / max(n_rows, 1)).numpy()
    mean_act = (total / count.clamp_min(1)).numpy()
    nu_eps = np.full(module.dict_size, np.nan, dtype=np.float32)
    nu_r = np.full(module.dict_size, np.nan, dtype=np.float32)
    if specific.size:
        own = torch.from_numpy((delta[specific] >= 0.9).astype(np.int64))
        ratios = scaling_ratios(scaling, module.W_dec_FMD.detach(), own)
        nu_eps[specific], nu_r[specific] = ratios.nu_eps.numpy(), ratios.nu_r.numpy()
    latents = {
        "latent": np.arange(module.dict_size, dtype=np.int64),
        "delta": delta.astype(np.float32),
        "cos": decoder_cosine(module.W_dec_FMD).numpy().astype(np.float32),
        "freq": freq.astype(np.float32),
        "mean_act": mean_act.astype(np.float32),
        "cls": classify(delta, freq),
        "nu_eps": nu_eps,
        "nu_r": nu_r,
    }
    act, doc, pos = top.result()
    l0 = float(count.sum() / max(n_rows, 1))
    return CrosscoderEval(moments.fve(), l0, float(np.mean(freq <= 0)), latents, np.asarray(act), np.asarray(doc),
                          np.asarray(pos), n_rows)
