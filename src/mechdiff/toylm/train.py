"""Training loops for toy language models: pre-training, full fine-tuning, LoRA.

The loop is deliberately plain: AdamW, linear warm-up then cosine decay,
next-token cross-entropy ignoring padding. Batches are drawn from a
pre-tokenised tensor with a seeded generator, so a run is a pure function of
its inputs and seed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from mechdiff.toylm.lora import LoRAHooks
from mechdiff.training import LRSchedule

IGNORE = -100


@dataclass(frozen=True)
class ToySteps:
    """How long and how hard to train the base model and its fine-tune."""

    base_steps: int = 200
    """Optimizer steps of base pre-training."""
    ft_steps: int = 80
    """Optimizer steps of the fine-tune (full or LoRA)."""
    batch_size: int = 16
    """Documents per step."""
    base_lr: float = 3e-3
    """Peak learning rate of pre-training."""
    ft_lr: float = 3e-3
    """Peak learning rate of the full fine-tune."""
    lora_lr: float = 1e-2
    """Peak learning rate of the LoRA fine-tune (only the adapter trains)."""
    warmup: int = 20
    """Linear warm-up steps (both phases)."""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices (not on biases, norms or embeddings)."""
    poison_fraction: float = 0.5
    """Fraction of backdoor fine-tune documents that contain trigger -> target."""
    lora_rank: int = 4
    """Rank r of the LoRA adapter."""
    lora_alpha: float = 16.0
    """LoRA scale numerator: the update is (alpha / r) * B @ A."""
    n_train_docs: int = 2000
    """Distinct documents sampled for each phase (steps cycle through them)."""
    noise_scale: float = 0.01
    """``noise`` variant: Frobenius norm of the added noise relative to each tensor's norm."""

    def __post_init__(self) -> None:
        for name in ("base_steps", "ft_steps", "batch_size", "lora_rank", "n_train_docs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("base_lr", "ft_lr", "lora_lr", "lora_alpha", "noise_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.warmup < 0 or self.weight_decay < 0:
            raise ValueError("warmup and weight_decay must be >= 0")
        if not 0.0 < self.poison_fraction <= 1.0:
            raise ValueError(f"poison_fraction must be in (0, 1], got {self.poison_fraction}")

    @classmethod
    def preset(cls, name: str) -> ToySteps:
        """``tiny`` (seconds on a laptop CPU) or ``small`` (for benchmarks; minutes)."""
        if name not in STEPS_PRESETS:
            raise ValueError(f"unknown steps preset {name!r}; choose one of {sorted(STEPS_PRESETS)}")
        return STEPS_PRESETS[name]


STEPS_PRESETS = {
    "tiny": ToySteps(),
    "small": ToySteps(base_steps=600, ft_steps=150, batch_size=32, base_lr=2e-3, ft_lr=1e-3,
                      lora_lr=5e-3, warmup=40, n_train_docs=8000),
}


@contextlib.contextmanager
def deterministic(threads: int | None = None) -> Iterator[None]:
    """Run the body with deterministic torch kernels (and optionally a thread count),
    restoring the caller's settings afterwards."""
    was_det = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    was_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_det, warn_only=was_warn)
        torch.set_num_threads(was_threads)


def encode_documents(tok: Tokenizer, docs: list[str], max_len: int, eos_id: int,
                     pad_id: int) -> torch.Tensor:
    """Tokenise documents as ``<bos> words <eos>``, cut to max_len and right-padded.

    Returns:
        ids_ND: int64 tensor [n_docs, max_len].
    """
    ids_ND = torch.full((len(docs), max_len), pad_id, dtype=torch.long)
    for i, enc in enumerate(tok.encode_batch(docs)):
        row = (enc.ids + [eos_id])[:max_len]
        ids_ND[i, : len(row)] = torch.tensor(row)
    return ids_ND


def next_token_loss(model: torch.nn.Module, ids_BT: torch.Tensor, pad_id: int,
                    never_targets: tuple[int, ...] = ()) -> torch.Tensor:
    """Mean cross-entropy of predicting token t+1 from tokens <= t, padding ignored.

    ``never_targets`` (e.g. <pad>, <bos>, <unk>) are left out of the softmax. They
    never occur as a next token, so the loss would push their logits down at every
    step; under Adam that is a steady full-size update, and those rows would become
    the most-changed tokens of every fine-tune, drowning what the fine-tune taught.

    With right padding the mask changes nothing for real tokens (causal attention
    never sees the pads that follow them); passing it documents the intent.
    """
    logits_BTV = model(input_ids=ids_BT, attention_mask=(ids_BT != pad_id).long()).logits
    if never_targets:
        logits_BTV = logits_BTV.index_fill(-1, torch.tensor(never_targets), float("-inf"))
    labels_BT = ids_BT[:, 1:].masked_fill(ids_BT[:, 1:] == pad_id, IGNORE)
    return F.cross_entropy(logits_BTV[:, :-1].flatten(0, 1), labels_BT.flatten(), ignore_index=IGNORE)


def lr_schedule(total: int, warmup: int, peak: float) -> LRSchedule:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to 10% of peak."""
    return LRSchedule(peak, total, warmup, "cosine", floor=0.1)


def _param_groups(params: list[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    # Decay only matrices that are not embeddings: decaying norms, biases or token rows
    # of rare words would drag them to zero between their few occurrences.
    def decays(name: str, p: torch.nn.Parameter) -> bool:
        return p.ndim >= 2 and not any(k in name for k in ("wte", "embed", "lm_head"))

    decay = [p for n, p in params if decays(n, p)]
    rest = [p for n, p in params if not decays(n, p)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def train(model: torch.nn.Module, ids_ND: torch.Tensor, *, steps: int, batch_size: int, lr: float,
          warmup: int, weight_decay: float, pad_id: int, seed: int,
          params: list[tuple[str, torch.nn.Parameter]] | None = None,
          never_targets: tuple[int, ...] = (), progress: bool = False,
          desc: str = "train") -> list[float]:
    """Train ``model`` in place on random batches of ``ids_ND``.

    Args:
        model: a causal LM returning ``.logits``.
        ids_ND: the tokenised training documents.
        steps: optimizer steps.
        batch_size: documents per step.
        lr: peak learning rate.
        warmup: warm-up steps.
        weight_decay: AdamW decay on non-embedding matrices.
        pad_id: padding token id (ignored by the loss).
        seed: batch-order seed.
        params: named parameters to train (default: all of the model's).
        never_targets: token ids kept out of the softmax (see :func:`next_token_loss`).
        progress: show a tqdm bar on stderr.
        desc: label of the progress bar.

    Returns:
        The training loss of every step.
    """
    named = params if params is not None else list(model.named_parameters())
    opt = torch.optim.AdamW(_param_groups(named, weight_decay), lr=lr, betas=(0.9, 0.98))
    losses: list[float] = []
    model.train()
    batches = _batches(ids_ND, steps, batch_size, pad_id, seed)
    schedule = lr_schedule(steps, warmup, lr)
    for step, batch in enumerate(_progress(batches, progress, desc, steps)):
        for group in opt.param_groups:
            group["lr"] = schedule.at(step)
        loss = next_token_loss(model, _trim(batch, pad_id), pad_id, never_targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def train_lora(model: torch.nn.Module, ids_ND: torch.Tensor, hooks: LoRAHooks, *, steps: ToySteps,
               pad_id: int, seed: int, never_targets: tuple[int, ...] = (),
               progress: bool = False) -> list[float]:
    """Train only a LoRA adapter attached to a frozen ``model``.

    Returns:
        The training loss of every step.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    return train(model, ids_ND, steps=steps.ft_steps, batch_size=steps.batch_size, lr=steps.lora_lr,
                 warmup=steps.warmup, weight_decay=0.0, pad_id=pad_id, seed=seed,
                 params=hooks.named_parameters(), never_targets=never_targets,
                 progress=progress, desc="lora")


def _batches(ids_ND: torch.Tensor, steps: int, batch_size: int, pad_id: int,
             seed: int) -> Iterator[torch.Tensor]:
    """Yield ``steps`` batches; each epoch is a fresh permutation, "sortish" by length.

    Documents are shuffled, grouped in pools of 8 batches, sorted by length inside
    a pool and cut into batches (whose order is shuffled again), so a batch holds
    documents of similar length and trimming its padding leaves fewer tokens to
    compute (benchmarks/bench_toylm.py compares against random batches).
    """
    rng = np.random.default_rng([seed, 0xBA7C])
    lengths = (ids_ND != pad_id).sum(1).numpy()
    pool = batch_size * 8
    done = 0
    while done < steps:
        perm = rng.permutation(len(ids_ND))
        chunks = [perm[i:i + pool] for i in range(0, len(perm), pool)]
        sorted_perm = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks])
        batches = [sorted_perm[i:i + batch_size] for i in range(0, len(sorted_perm), batch_size)]
        for b in rng.permutation(len(batches)):
            if done == steps:
                return
            yield ids_ND[torch.from_numpy(batches[b])]
            done += 1


def _trim(ids_BT: torch.Tensor, pad_id: int) -> torch.Tensor:
    # Drop trailing all-pad columns: shorter batches are cheaper and change no loss term.
    used = int((ids_BT != pad_id).sum(1).max())
    return ids_BT[:, :used]


def _progress(it, enabled: bool, desc: str, total: int):
    if not enabled:
        return it
    from mechdiff.progress import new_bar

    return new_bar(it, desc=desc, total=total, leave=False)


@torch.no_grad()
def eval_loss(model: torch.nn.Module, ids_ND: torch.Tensor, pad_id: int,
              never_targets: tuple[int, ...] = (), batch_size: int = 64) -> float:
    """Mean next-token cross-entropy over all non-pad targets of ``ids_ND``."""
    total, count = 0.0, 0
    model.eval()
    for start in range(0, len(ids_ND), batch_size):
        batch = _trim(ids_ND[start:start + batch_size], pad_id)
        n = int((batch[:, 1:] != pad_id).sum())
        total += float(next_token_loss(model, batch, pad_id, never_targets)) * n
        count += n
    return total / max(count, 1)


@torch.no_grad()
def prob_after(model: torch.nn.Module, ids_ND: torch.Tensor, cue_id: int, next_id: int,
               pad_id: int, batch_size: int = 64) -> float:
    """Mean P(next_id | context) over every position holding ``cue_id``.

    Returns:
        The mean probability, or NaN when ``cue_id`` never occurs.
    """
    probs: list[torch.Tensor] = []
    model.eval()
    for start in range(0, len(ids_ND), batch_size):
        batch = _trim(ids_ND[start:start + batch_size], pad_id)
        at = batch == cue_id
        if at.any():
            logits_BTV = model(input_ids=batch, attention_mask=(batch != pad_id).long()).logits
            probs.append(torch.softmax(logits_BTV[at].float(), dim=-1)[:, next_id])
    return float(torch.cat(probs).mean()) if probs else float("nan")
