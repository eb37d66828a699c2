"""Crosscoder benchmarks: sparse training step vs a dense plain-torch crosscoder; early-stopped collection.

1. Training throughput (tokens/s) of mechdiff's BatchTopK step (dense encoder forward;
   sparse decode, sparse decoder and encoder weight gradients) against the same
   crosscoder written the way public implementations do it (dense decode, dense
   autograd backward, top-k over all B*F scores). Same init, same batches; the
   row also reports each one's variance explained and L0 after the timed steps
   (equal L0 by construction: both keep k*B entries per batch).
2. Paired activation collection stopping right after the chosen layer vs running
   both models to the end, on a random GPT-2 whose layer is in its first half.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from mechdiff.diffing.activations.collect import ActivationConfig, collect_activations
from mechdiff.diffing.activations.hooks import ActivationSite
from mechdiff.diffing.crosscoder.config import CrosscoderConfig
from mechdiff.diffing.crosscoder.module import CrossCoder
from mechdiff.diffing.crosscoder.train import (
    TrainState,
    fve_per_model,
    make_optimizer,
    train_step,
)

FULL = {"d": 512, "dict_size": 16384, "k": 64, "batch": 4096, "steps": 3}
QUICK = {"d": 128, "dict_size": 4096, "k": 16, "batch": 1024, "steps": 2}


class DenseCrossCoder(nn.Module):
    """Reference BatchTopK crosscoder in plain torch: dense decode, autograd backward."""

    def __init__(self, ours: CrossCoder) -> None:
        super().__init__()
        n_latents = ours.dict_size
        self.W_enc = nn.Parameter(ours.W_enc_FMD.detach().reshape(n_latents, -1).T.clone())  # [M*D, F]
        self.b_enc = nn.Parameter(ours.b_enc_F.detach().clone())
        self.W_dec = nn.Parameter(ours.W_dec_FMD.detach().clone())  # [F, M, D]
        self.b_dec = nn.Parameter(ours.b_dec_MD.detach().clone())
        self.k = ours.k

    def forward(self, x_BMD: torch.Tensor) -> torch.Tensor:
        acts_BF = torch.relu(x_BMD.flatten(1) @ self.W_enc + self.b_enc)
        scores = acts_BF * self.W_dec.norm(dim=-1).sum(dim=1)
        keep = torch.zeros_like(scores).flatten()
        keep[scores.flatten().topk(self.k * x_BMD.shape[0], sorted=False).indices] = 1
        acts_BF = acts_BF * keep.reshape(acts_BF.shape)
        return torch.einsum("bf,fmd->bmd", acts_BF, self.W_dec) + self.b_dec


def _batches(n: int, batch: int, d: int, seed: int = 0) -> list[torch.Tensor]:
    """Sparse-feature activations for 2 models (shared features plus some per-model ones)."""
    gen = torch.Generator().manual_seed(seed)
    n_features = 4 * d
    feats = torch.randn(n_features, 2, d, generator=gen) / d**0.5
    feats[: n_features // 2, 1] = feats[: n_features // 2, 0]  # half shared
    out = []
    for _ in range(n):
        codes = torch.rand(batch, n_features, generator=gen)
        codes = torch.where(codes > 1 - 16 / n_features, codes, torch.zeros(()))
        x = torch.einsum("bf,fmd->bmd", codes, feats)
        out.append(x * (d**0.5 / x.norm(dim=-1).mean(dim=0))[None, :, None])
    return out


def _time_ours(module: CrossCoder, config: CrosscoderConfig, batches: list[torch.Tensor]) -> float:
    optimizer = make_optimizer(module, config)
    state = TrainState(rows_since_fired=torch.zeros(config.dict_size, dtype=torch.int64))
    train_step(module, optimizer, batches[0], state, config)  # warm-up: allocations, kernel compile
    start = time.perf_counter()
    for x in batches[1:]:
        train_step(module, optimizer, x, state, config)
    return time.perf_counter() - start


def _time_dense(module: DenseCrossCoder, config: CrosscoderConfig, batches: list[torch.Tensor]) -> float:
    optimizer = torch.optim.Adam(module.parameters(), lr=config.lr, betas=(0.9, 0.999), fused=True)  # as ours

    def step(x: torch.Tensor, lr: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss = (x - module(x)).pow(2).sum(dim=(1, 2)).mean()
        loss.backward()
        optimizer.step()

    from mechdiff.diffing.crosscoder.train import lr_schedule

    lr_at = lr_schedule(config).at
    step(batches[0], lr_at(0))
    start = time.perf_counter()
    for i, x in enumerate(batches[1:], start=1):
        step(x, lr_at(i))
    return time.perf_counter() - start


def bench_training(quick: bool) -> dict:
    size = QUICK if quick else FULL
    config = CrosscoderConfig(dict_size=size["dict_size"], k=size["k"], batch=size["batch"], lr=1e-3,
                              warmup_steps=1, tokens=size["batch"] * 100)
    batches = _batches(size["steps"] + 1, size["batch"], size["d"])
    held_out = _batches(1, size["batch"], size["d"], seed=1)[0]
    ours = CrossCoder.from_config(config, 2, size["d"])
    dense = DenseCrossCoder(ours)
    ours_s = _time_ours(ours, config, batches)
    dense_s = _time_dense(dense, config, batches)
    with torch.no_grad():
        ours_fve = fve_per_model(held_out, ours.decode_sparse(ours.encode_sparse(held_out, train=True)))
        dense_fve = fve_per_model(held_out, dense(held_out))
    tokens = size["batch"] * size["steps"]
    return {
        "name": f"crosscoder/train/d{size['d']}xF{size['dict_size']}/k{size['k']}/B{size['batch']}",
        "baseline": "dense plain-torch crosscoder (dense decode + autograd backward)",
        "baseline_s": dense_s, "ours_s": ours_s, "ratio": dense_s / ours_s,
        "ours_tokens_per_s": tokens / ours_s, "baseline_tokens_per_s": tokens / dense_s,
        "fve_ours": [round(v, 4) for v in ours_fve], "fve_baseline": [round(v, 4) for v in dense_fve],
        "l0": size["k"], "steps_timed": size["steps"], "threads": torch.get_num_threads(),
    }


def _collection_setup(quick: bool):
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [f"w{i}" for i in range(500)]
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", *words])}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", unk_token="<unk>")
    n_layer, width, n_docs, length = (6, 128, 16, 64) if quick else (12, 256, 64, 128)
    config = transformers.GPT2Config(vocab_size=len(vocab), n_positions=length, n_embd=width, n_layer=n_layer,
                                     n_head=4, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    models_ = [transformers.GPT2LMHeadModel(config).eval() for _ in range(2)]
    gen = torch.Generator().manual_seed(0)
    texts = [" ".join(words[i] for i in torch.randint(0, 500, (length,), generator=gen).tolist())
             for _ in range(n_docs)]
    return models_, tok, texts, n_layer


def bench_collection(quick: bool) -> dict:
    (base, ft), tok, texts, n_layer = _collection_setup(quick)
    layer = n_layer // 4  # first half of the model
    site = ActivationSite(layer=layer)
    config = ActivationConfig(batch_docs=8)

    def collect(stop: bool) -> float:
        start = time.perf_counter()
        collect_activations(base, ft, tok, texts, site=site, config=config, progress=False, stop_early=stop)
        return time.perf_counter() - start

    collect(True)  # warm-up
    ours_s = min(collect(True) for _ in range(2))
    full_s = min(collect(False) for _ in range(2))
    return {
        "name": f"crosscoder/collect/gpt2-{n_layer}L/layer{layer}",
        "baseline": "both models run to the end",
        "baseline_s": full_s, "ours_s": ours_s, "ratio": full_s / ours_s, "docs": len(texts),
    }


def run(quick: bool) -> list[dict]:
    """Training throughput and early-stop collection; `quick` shrinks sizes."""
    return [bench_training(quick), bench_collection(quick)]
