"""The crosscoder artifact: one encoder over both models, one decoder (and bias) per model.

Inputs are paired activations x [B, M, D] (M models, D the residual width),
already normalized by the per-model scale (see :meth:`CrossCoder.normalize`).
Encoder f = ReLU(sum_m W_enc^m x^m + b_enc); decoders x_hat^m = sum_j f_j d_j^m + b_dec^m.
Activations are passed around sparsely as CSR rows (values, indices, offsets);
training lives in :mod:`mechdiff.diffing.crosscoder.train`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mechdiff.diffing.crosscoder.config import SPARSITIES, CrosscoderConfig
from mechdiff.diffing.crosscoder.ops import sparse_encode_values
from mechdiff.kernels import sparse_decode

__all__ = ["CrossCoder", "CrosscoderConfig", "SparseCode", "batch_topk_positions"]


@dataclass(frozen=True)
class SparseCode:
    """A batch of latent activations in CSR form."""

    values: torch.Tensor
    """[nnz] activation of each stored entry."""
    indices: torch.Tensor
    """[nnz] int64 latent id of each entry."""
    offsets: torch.Tensor
    """[B+1] int64 start of each row's entries."""

    @property
    def n_rows(self) -> int:
        return self.offsets.numel() - 1

    def to_dense(self, n_latents: int) -> torch.Tensor:
        """[B, F] dense activations."""
        rows = torch.repeat_interleave(torch.arange(self.n_rows, device=self.values.device), self.row_counts())
        dense = torch.zeros(self.n_rows, n_latents, dtype=self.values.dtype, device=self.values.device)
        dense[rows, self.indices] = self.values
        return dense

    def row_counts(self) -> torch.Tensor:
        """[B] number of active latents per row (the L0 of each row)."""
        return self.offsets[1:] - self.offsets[:-1]


class CrossCoder(nn.Module):
    """Crosscoder over M models' activations at one site.

    Args:
        n_models: M, number of models (2 for base/ft; model 0 is base, 1 is ft).
        d_model: D, activation width per model.
        dict_size: F, number of latents.
        k: BatchTopK mean active latents per row (ignored for L1).
        sparsity: 'batchtopk' or 'l1'.
    """

    def __init__(self, n_models: int, d_model: int, dict_size: int, k: int = 64, sparsity: str = "batchtopk") -> None:
        super().__init__()
        if sparsity not in SPARSITIES:
            raise ValueError(f"sparsity must be one of {SPARSITIES}, got {sparsity!r}")
        self.n_models, self.d_model, self.dict_size, self.k, self.sparsity = n_models, d_model, dict_size, k, sparsity
        self.W_enc_FMD = nn.Parameter(torch.zeros(dict_size, n_models, d_model))
        self.b_enc_F = nn.Parameter(torch.zeros(dict_size))
        self.W_dec_FMD = nn.Parameter(torch.zeros(dict_size, n_models, d_model))
        self.b_dec_MD = nn.Parameter(torch.zeros(n_models, d_model))
        # running BatchTopK inference threshold on scores f_j * sum_m ||d_j^m||
        self.register_buffer("threshold", torch.tensor(-1.0))
        # per-model multiplier that brings raw activations to mean norm sqrt(D)
        self.register_buffer("input_scale_M", torch.ones(n_models))

    @classmethod
    def from_config(cls, config: CrosscoderConfig, n_models: int, d_model: int) -> CrossCoder:
        """A freshly initialized crosscoder (decoder rows of norm dec_init_norm, encoder = transpose)."""
        module = cls(n_models, d_model, config.dict_size, config.k, config.sparsity)
        module.reset_parameters(config.dec_init_norm, torch.Generator().manual_seed(config.seed))
        return module

    @torch.no_grad()
    def reset_parameters(self, dec_init_norm: float, generator: torch.Generator) -> None:
        """Random decoder directions with norm dec_init_norm per latent and model; W_enc = W_dec^T."""
        directions = torch.randn(self.W_dec_FMD.shape, generator=generator)
        directions /= directions.norm(dim=-1, keepdim=True)
        self.W_dec_FMD.copy_(directions * dec_init_norm)
        self.W_enc_FMD.copy_(self.W_dec_FMD)
        self.b_enc_F.zero_()
        self.b_dec_MD.zero_()

    def normalize(self, x_BMD: torch.Tensor) -> torch.Tensor:
        """Raw activations [B, M, D] -> the normalized inputs the crosscoder was trained on."""
        return x_BMD * self.input_scale_M.to(x_BMD.dtype)[None, :, None]

    def decoder_norms(self) -> torch.Tensor:
        """[F, M] norm of each latent's decoder vector in each model."""
        return self.W_dec_FMD.norm(dim=-1)

    def pre_acts(self, x_BMD: torch.Tensor) -> torch.Tensor:
        """[B, F] encoder pre-activations (the one dense product of a step)."""
        self._check_input(x_BMD)
        w_enc = self.W_enc_FMD.reshape(self.dict_size, -1)
        return torch.addmm(self.b_enc_F, x_BMD.reshape(x_BMD.shape[0], -1), w_enc.T)

    @torch.no_grad()
    def select(self, pre_BF: torch.Tensor, *, train: bool) -> SparseCode:
        """Which latents fire, with their (detached) activations.

        BatchTopK keeps the k*B largest scores f_bj * sum_m ||d_j^m|| of the batch
        when training and the scores above the running threshold otherwise;
        L1 keeps every positive activation.
        """
        if self.sparsity == "l1":
            return _code_from_positions(pre_BF, torch.nonzero(pre_BF.reshape(-1) > 0).squeeze(1))
        # negative pre-activations give negative scores, which are never kept: no ReLU pass needed
        scores_BF = pre_BF * self.decoder_norms().sum(dim=1)
        if train or self.threshold < 0:
            positions = batch_topk_positions(scores_BF, self.k * pre_BF.shape[0])
        else:
            positions = torch.nonzero(scores_BF.reshape(-1) > self.threshold).squeeze(1)
        # kept scores are > 0, so the pre-activations there are the ReLU outputs
        return _code_from_positions(pre_BF, positions)

    def encode_sparse(self, x_BMD: torch.Tensor, *, train: bool = False) -> SparseCode:
        """Sparse latent activations of x, differentiable w.r.t. the encoder parameters."""
        with torch.no_grad():
            pre_BF = self.pre_acts(x_BMD)
        return self.attach_encoder_grad(x_BMD, self.select(pre_BF, train=train))

    def attach_encoder_grad(self, x_BMD: torch.Tensor, code: SparseCode) -> SparseCode:
        """The same code with values differentiable w.r.t. W_enc and b_enc (sparse backward)."""
        x_flat = x_BMD.reshape(x_BMD.shape[0], -1)
        w_enc = self.W_enc_FMD.reshape(self.dict_size, -1)
        values = sparse_encode_values(code.values, code.indices, code.offsets, x_flat, w_enc, self.b_enc_F)
        return SparseCode(values, code.indices, code.offsets)

    def decode_sparse(self, code: SparseCode) -> torch.Tensor:
        """[B, M, D] reconstruction of both models from sparse activations."""
        w_dec = self.W_dec_FMD.reshape(self.dict_size, -1)
        out = sparse_decode(code.values, code.indices, code.offsets, w_dec)
        return out.reshape(code.n_rows, self.n_models, self.d_model) + self.b_dec_MD

    @torch.no_grad()
    def encode(self, x_BMD: torch.Tensor) -> torch.Tensor:
        """[B, F] dense latent activations at inference (normalized inputs)."""
        return self.select(self.pre_acts(x_BMD), train=False).to_dense(self.dict_size)

    def forward(self, x_BMD: torch.Tensor) -> tuple[torch.Tensor, SparseCode]:
        """Inference reconstruction [B, M, D] and the sparse code of normalized inputs."""
        code = self.encode_sparse(x_BMD, train=False)
        return self.decode_sparse(code), code

    def _check_input(self, x_BMD: torch.Tensor) -> None:
        expected = (self.n_models, self.d_model)
        if x_BMD.dim() != 3 or tuple(x_BMD.shape[1:]) != expected:
            raise ValueError(f"crosscoder input must be [B, {expected[0]}, {expected[1]}], got {list(x_BMD.shape)}")


def batch_topk_positions(scores_BF: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Sorted flat positions of the n_keep largest positive scores of the batch.

    Exact, but avoids a top-k over all B*F scores: a strided sample gives a
    threshold a little below the wanted quantile, the (few) candidates above it
    are ranked exactly, and the full ranking runs only if the guess was too high.

    Args:
        scores_BF: [B, F] scores; only positive ones can be kept.
        n_keep: number of entries to keep (fewer when fewer scores are positive).

    Returns:
        [<= n_keep] int64 flat positions into scores_BF, ascending.
    """
    flat = scores_BF.reshape(-1)
    guess = _threshold_guess(flat, n_keep)
    candidates = torch.nonzero(flat >= guess if guess > 0 else flat > 0).squeeze(1)
    if guess > 0 and candidates.numel() < n_keep:  # guessed too high: rank everything
        candidates = torch.nonzero(flat > 0).squeeze(1)
    if candidates.numel() <= n_keep:
        return candidates
    chosen = torch.zeros(candidates.numel(), dtype=torch.bool, device=flat.device)
    chosen[flat[candidates].topk(n_keep, sorted=False).indices] = True
    return candidates[chosen]  # a mask keeps the ascending order without sorting


def _threshold_guess(flat: torch.Tensor, n_keep: int) -> float:
    """A score a little below the n_keep-th largest, from a strided sample (0: no guess)."""
    n_sample = 1 << 14
    if flat.numel() < 16 * n_sample:
        return 0.0
    stride = flat.numel() // n_sample
    sample = flat[::stride]
    # aim for ~1.25x n_keep candidates plus slack for sampling noise
    want = (1.25 * n_keep + 8 * stride) / flat.numel()
    if want >= 1:
        return 0.0
    rank = min(sample.numel(), max(1, int(want * sample.numel())))
    return float(sample.float().kthvalue(sample.numel() - rank + 1).values)


def _code_from_positions(acts_BF: torch.Tensor, positions: torch.Tensor) -> SparseCode:
    n_rows, n_latents = acts_BF.shape
    rows = torch.div(positions, n_latents, rounding_mode="floor")
    counts = torch.bincount(rows, minlength=n_rows)
    offsets = torch.zeros(n_rows + 1, dtype=torch.int64, device=acts_BF.device)
    offsets[1:] = torch.cumsum(counts, 0)
    return SparseCode(acts_BF.reshape(-1)[positions], positions % n_latents, offsets)
