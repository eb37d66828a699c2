"""Activation-difference lens (ADL): the mean of h_ft - h_base over the first few positions of
unrelated text, read out three ways.

A narrow fine-tune shifts the residual stream on *every* input, even text unrelated to its
objective; averaged over the first k positions of many documents, the shift is a readable
direction (Minder et al. 2025, "Narrow finetuning leaves clearly readable traces"):
- logit lens: the mean difference added to the base's own activations at those positions,
  read through the final norm and the unembedding; tokens ranked by their share of the KL it
  causes (mass-weighted, like logit-difference mining), and that KL is the lens's score;
- patchscope: the difference, scaled to the residual's typical norm, inserted as the last
  position of an identity prompt of the base (``a a b b c c ?``) and read at the next token;
- steering: the base generates with alpha * difference added at the layer, alpha the largest
  whose text the unsteered base still reads within ``loss_factor`` of its loss on its own samples.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mechdiff.diffing.activations.hooks import find_blocks
from mechdiff.diffing.behaviour.neutral import (
    cached_logits,
    decode,
    sample_ids,
    start_token,
)
from mechdiff.errors import InputError

_FINAL_NORMS = ("transformer.ln_f", "model.norm", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm",
                "transformer.norm_f", "model.final_layernorm")
READOUT_ROWS = 512  # base activations the logit-lens readout averages over (bounds a [rows, vocab] matrix)


@dataclass(frozen=True)
class ADLConfig:
    """Where the ADL reads and how it steers."""

    layer: int | None = None
    """Block whose output (residual stream) is read (None: the middle block, n_layers // 2)."""
    positions: int = 5
    """First positions of each document averaged over (after a BOS token)."""
    max_docs: int = 4096
    """Documents read at most."""
    top_tokens: int = 20
    """Tokens listed up and down."""
    steer_samples: int = 4
    """Samples generated per alpha tried."""
    steer_length: int = 24
    """Tokens per steered sample."""
    loss_factor: float = 2.0
    """Coherence: the base's per-token loss on steered text at most this many times its loss on
    its own unsteered samples."""
    max_scale: float = 8.0
    """Largest alpha tried makes alpha * |difference| this many times the residual's mean norm."""
    search_steps: int = 7
    """Bisection steps of the alpha search."""
    seed: int = 0
    """Seed of the steered samples (every alpha is sampled with the same seed)."""
    device: str = "cpu"
    """Where the models run."""

    def __post_init__(self) -> None:
        for name in ("positions", "max_docs", "top_tokens", "steer_samples", "steer_length", "search_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ADLConfig: {name} must be positive")
        if self.loss_factor <= 1 or self.max_scale <= 0:
            raise ValueError("ADLConfig: loss_factor must be > 1 and max_scale > 0")
        if self.layer is not None and self.layer < 0:
            raise ValueError("ADLConfig: layer must be >= 0")


@dataclass
class ADLResult:
    """The mean activation difference at one layer and its readouts."""

    layer: int
    positions: int
    n_rows: int
    delta: np.ndarray  # float32 [d], the mean difference at `layer`
    layer_norms: list[float]  # |mean difference| per block output
    resid_norms: list[float]  # mean |h_base| per block output
    readout_kl: float  # KL(p(h + delta) || p(h)) of the logit lens, nats per position
    up: list[dict] = field(default_factory=list)  # token, weight
    down: list[dict] = field(default_factory=list)
    patchscope: list[dict] = field(default_factory=list)  # token, weight
    steered: list[dict] = field(default_factory=list)  # alpha, text
    alpha: float = 0.0
    steer_losses: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The audit JSON's ``adl`` (token lists as plain strings, best first; weights beside)."""
        return {"layer": self.layer, "positions": self.positions, "rows": self.n_rows,
                "tokens_up": [r["token"] for r in self.up], "tokens_down": [r["token"] for r in self.down],
                "weights_up": [r["weight"] for r in self.up], "weights_down": [r["weight"] for r in self.down],
                "readout_kl": self.readout_kl, "patchscope": [r["token"] for r in self.patchscope],
                "steered": self.steered, "alpha": self.alpha, "steer_losses": self.steer_losses,
                "layer_norms": self.layer_norms, "resid_norms": self.resid_norms}

    def write(self, writer: Any) -> None:
        """Store as /adl: the difference vector, per-layer norms, token tables, the document."""
        writer.array("adl/delta", self.delta.astype(np.float32))
        writer.array("adl/layer_norms", np.asarray(self.layer_norms, dtype=np.float64))
        for name, rows in (("tokens_up", self.up), ("tokens_down", self.down), ("patchscope", self.patchscope)):
            if rows:
                writer.table(f"adl/{name}", {k: [r[k] for r in rows] for k in rows[0]})
        if self.steered:
            writer.table("adl/steered", {"alpha": [s["alpha"] for s in self.steered],
                                         "text": [s["text"] for s in self.steered]})
        writer.attrs("adl", {"document": self.to_json(), "layer": self.layer, "positions": self.positions})


def largest_coherent_alpha(loss_at: Callable[[float], float], limit: float, high: float, steps: int) -> float:
    """The largest alpha in [0, high] whose loss stays within ``limit``, by bisection.

    Assumes coherence breaks once (loss grows with alpha); alpha 0 is coherent by definition.
    The answer is within high / 2**steps below the break.
    """
    if loss_at(high) <= limit:
        return high
    lo, hi = 0.0, high
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if loss_at(mid) <= limit else (lo, mid)
    return lo


def final_readout(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Residual [.., d] -> logits [.., V]: the model's final norm, then its unembedding."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise InputError("the model has no output embedding (unembedding) to read the ADL through")
    norm: nn.Module = nn.Identity()
    for path in _FINAL_NORMS:
        with contextlib.suppress(AttributeError):
            norm = model.get_submodule(path)
            break
    return lambda h: head(norm(h)).float()


class _PastLastBlock(Exception):
    """Raised by the last block's hook: the final norm and the unembedding are not needed."""


class _BlockOutputs:
    """Forward hooks keeping every block's output at the first positions; the pass stops after the last block."""

    def __init__(self, model: nn.Module, keep: int) -> None:
        self.blocks, self.keep = find_blocks(model), keep
        self.outputs: list[torch.Tensor | None] = [None] * len(self.blocks)

    def run(self, model: nn.Module, ids: torch.Tensor) -> None:
        """One forward pass of ``model`` over ``ids`` up to the last block's output."""
        with self.attached(), contextlib.suppress(_PastLastBlock):
            model(input_ids=ids)

    @contextlib.contextmanager
    def attached(self) -> Iterator[_BlockOutputs]:
        handles = [b.register_forward_hook(self._hook(i)) for i, b in enumerate(self.blocks)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def _hook(self, index: int) -> Callable:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            self.outputs[index] = hidden[:, : self.keep].detach().float()
            if index == len(self.blocks) - 1:
                raise _PastLastBlock
        return hook


@contextlib.contextmanager
def edited_block(model: nn.Module, layer: int, edit: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace block ``layer``'s output hidden state h by edit(h) during the forward passes inside."""
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if isinstance(output, (tuple, list)):
            return (edit(output[0]), *output[1:])
        return edit(output)

    handle = find_blocks(model)[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def mean_difference(base: nn.Module, ft: nn.Module, docs: list[np.ndarray], positions: int, bos_id: int | None,
                    layer: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean h_ft - h_base per block over the first ``positions`` tokens of each document (BOS skipped).

    Returns:
        (mean difference per block [L, d], base activations of block ``layer`` at up to
        READOUT_ROWS of the rows [n, d], mean |h_base| per block [L]).
    """
    skip = 1 if bos_id is not None and all(len(d) and d[0] == bos_id for d in docs) else 0
    width = skip + positions
    rows = [d[:width] for d in docs if len(d) > skip]
    if not rows:
        raise InputError("no document has a token after BOS to read the activation difference at")
    hooks = [_BlockOutputs(base, width), _BlockOutputs(ft, width)]
    diff_sum, norm_sum, count, kept = 0.0, 0.0, 0, []
    for length in sorted({len(r) for r in rows}):  # equal lengths: no padding to mask
        ids = torch.as_tensor(np.stack([r for r in rows if len(r) == length]), device=device)
        for model, capture in zip((base, ft), hooks):
            capture.run(model, ids)
        h_base = torch.stack(hooks[0].outputs)[:, :, skip:].flatten(1, 2)  # [L, rows, d]
        h_ft = torch.stack(hooks[1].outputs)[:, :, skip:].flatten(1, 2)
        diff_sum = diff_sum + (h_ft - h_base).sum(1)
        norm_sum = norm_sum + h_base.norm(dim=-1).sum(1)
        count += h_base.shape[1]
        kept.append(h_base[layer, : max(0, READOUT_ROWS - sum(len(k) for k in kept))])
    return diff_sum / count, torch.cat(kept), norm_sum / count


def ranked_shift(p_new: torch.Tensor, p_old: torch.Tensor, top: int, text_of: Callable[[int], str]
                 ) -> tuple[list[dict], list[dict], float]:
    """Tokens up (share of KL(new || old)) and down (share of KL(old || new)), averaged over rows, and the KL."""
    log_new, log_old = p_new.clamp_min(1e-30).log(), p_old.clamp_min(1e-30).log()
    up_w = (p_new * (log_new - log_old)).clamp_min(0).reshape(-1, p_new.shape[-1]).mean(0)
    down_w = (p_old * (log_old - log_new)).clamp_min(0).reshape(-1, p_new.shape[-1]).mean(0)
    kl = float((p_new * (log_new - log_old)).sum(-1).mean())

    def rows(weight: torch.Tensor) -> list[dict]:
        order = torch.topk(weight, min(top, weight.numel())).indices.tolist()
        return [{"token": text_of(i), "weight": float(weight[i])} for i in order if weight[i] > 0]

    return rows(up_w), rows(down_w), max(kl, 0.0)


@torch.no_grad()
def patchscope(base: nn.Module, layer: int, vector: torch.Tensor, prompt: list[int], top: int,
               text_of: Callable[[int], str]) -> list[dict]:
    """Next-token tokens the base reads from ``vector`` placed as the last position of an identity prompt."""
    ids = torch.as_tensor([prompt], device=vector.device)
    plain = F.softmax(base(input_ids=ids).logits[0, -1].float(), -1)

    def put(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[:, -1] = vector.to(h.dtype)
        return h

    with edited_block(base, layer, put):
        patched = F.softmax(base(input_ids=ids).logits[0, -1].float(), -1)
    return ranked_shift(patched[None], plain[None], top, text_of)[0]


def identity_prompt(docs: list[np.ndarray], special: set[int], start: int | None) -> list[int]:
    """``[start] a a b b c c x``: three tokens repeated, then a placeholder the difference replaces."""
    seen: list[int] = []
    for doc in docs:
        for token in doc.tolist():
            if token not in special and token not in seen:
                seen.append(token)
            if len(seen) == 4:
                pairs = [t for t in seen[:3] for _ in range(2)]
                return ([start] if start is not None else []) + pairs + [seen[3]]
    raise InputError("the text has fewer than 4 distinct tokens; the patchscope needs an identity prompt")


@torch.no_grad()
def base_loss(base: nn.Module, ids: torch.Tensor) -> float:
    """The base's mean per-token loss (nats) on rows of token ids (first token is the prompt)."""
    logits = base(input_ids=ids).logits[:, :-1].float()
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)))


@torch.no_grad()
def steer(base: nn.Module, tokenizer: Any, layer: int, delta: torch.Tensor, resid_norm: float,
          config: ADLConfig) -> tuple[float, list[dict], dict[str, float]]:
    """Steer the base with alpha * delta at ``layer``; alpha the largest that stays coherent.

    Returns:
        (alpha, steered samples [{"alpha", "text"}], {"unsteered_loss", "limit", "steered_loss"}).
    """
    start = start_token(tokenizer)
    cache: dict[float, torch.Tensor] = {}
    losses_at: dict[float, float] = {}

    def samples(alpha: float) -> torch.Tensor:
        if alpha not in cache:
            g = torch.Generator().manual_seed(config.seed)
            with edited_block(base, layer, lambda h: h + alpha * delta.to(h.dtype)):
                cache[alpha] = sample_ids(cached_logits(base), start, config.steer_samples, config.steer_length,
                                          g, config.device)
        return cache[alpha]

    def loss_at(alpha: float) -> float:
        if alpha not in losses_at:
            losses_at[alpha] = base_loss(base, samples(alpha))
        return losses_at[alpha]

    reference = loss_at(0.0)
    limit = config.loss_factor * reference
    high = config.max_scale * resid_norm / max(float(delta.norm()), 1e-12)
    alpha = largest_coherent_alpha(loss_at, limit, high, config.search_steps)
    steered = [{"alpha": alpha, "text": decode(tokenizer, row[1:])} for row in samples(alpha).tolist()]
    losses = {"unsteered_loss": reference, "limit": limit, "steered_loss": loss_at(alpha)}
    return alpha, steered, losses


@torch.no_grad()
def activation_difference(base: nn.Module, ft: nn.Module, tokenizers: Any, texts: list[str],
                          config: ADLConfig | None = None) -> ADLResult:
    """The activation-difference lens on unrelated text.

    Args:
        base: base causal LM; ft: fine-tuned causal LM with the same blocks.
        tokenizers: one tokenizer or the (base, ft) pair (they must agree on the texts).
        texts: unrelated documents (only their first ``positions`` tokens are read).
        config: layer, positions, steering.

    Returns:
        The mean difference, its per-layer norms, logit-lens and patchscope tokens, steered samples.
    """
    from mechdiff.diffing.activations.collect import tokenize_pair
    from mechdiff.diffing.behaviour.kl import token_text

    config = config or ADLConfig()
    tok = tokenizers[0] if isinstance(tokenizers, (list, tuple)) else tokenizers
    n_layers = len(find_blocks(base))
    layer = n_layers // 2 if config.layer is None else config.layer
    if layer >= n_layers:
        raise InputError(f"ADL layer {layer} is out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    docs = tokenize_pair(tokenizers, texts[: config.max_docs], config.positions + 1)
    bos = getattr(tok, "bos_token_id", None)
    diffs, rows, resid = mean_difference(base, ft, docs, config.positions, bos, layer, config.device)
    delta = diffs[layer]
    text_of = lambda i: token_text(tok, i)
    readout = final_readout(base)
    up, down, kl = ranked_shift(F.softmax(readout(rows + delta), -1), F.softmax(readout(rows), -1),
                                config.top_tokens, text_of)
    special = {v for v in (bos, getattr(tok, "eos_token_id", None), getattr(tok, "pad_token_id", None)) if v is not None}
    scaled = delta / max(float(delta.norm()), 1e-12) * resid[layer]
    patched = patchscope(base, layer, scaled, identity_prompt(docs, special, bos), config.top_tokens, text_of)
    alpha, steered, losses = steer(base, tok, layer, delta, float(resid[layer]), config)
    return ADLResult(layer, config.positions, rows.shape[0], delta.cpu().numpy(), diffs.norm(dim=-1).tolist(),
                     resid.tolist(), kl, up, down, patched, steered, alpha, losses)
