"""Crosscoder benchmarks: sparse training step vs a dense plain-torch crosscoder; early-stopped collection.

1. Training throughput (tokens/s) of mechdiff's BatchTopK step (dense encoder forward;
   sparse decode, sparse decoder and encoder weight gradients) against the same
   crosscoder written the way public implementations do it (dense decode, dense
   autograd backward, top-k over all B*F scores). Same init, same batches; the
   row also reports each one's variance explained and L0 after the timed steps
   (equal L0 by construction: both keep k*B entries per batch).
2. Paired activation collection stopping right after the chosen layer vs running
   both models to the end, on a random GPT-2 whose layer is in its first half.
3. Device rows (only where CUDA is available): row 1 on the GPU at dict 16384 / 65536 /
   131072, d 2304, batch 4096, k 100, in fp32, TF32 and bf16 autocast (the dense baseline
   runs under the same precision), with both variances explained after the same steps
   and the share of the encoder-matmul roofline reached: the encoder forward is the one
   dense product of a step, 2*B*(2d)*F flops, set against the card's datasheet peak for
   that precision (:data:`PEAK_TFLOPS`; a card not listed gets no share). The same code
   runs on the CPU at tiny sizes: ``python benchmarks/bench_crosscoder.py --device cpu --tiny``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from harness import format_table, make_row
from torch import nn

from mechdiff.diffing.activations.collect import ActivationConfig, collect_activations
from mechdiff.diffing.activations.hooks import ActivationSite
from mechdiff.diffing.crosscoder.config import CrosscoderConfig
from mechdiff.diffing.crosscoder.module import CrossCoder
from mechdiff.diffing.crosscoder.precision import autocast, matmul_scope
from mechdiff.diffing.crosscoder.train import (
    TrainState,
    fve_per_model,
    lr_schedule,
    make_optimizer,
    train_step,
)

FULL = {"d": 512, "dict_size": 16384, "k": 64, "batch": 4096, "steps": 3}
QUICK = {"d": 128, "dict_size": 4096, "k": 16, "batch": 1024, "steps": 2}
DEVICE_PRECISIONS = ("fp32", "tf32", "bf16")

# Dense (not sparsity-doubled) datasheet peaks in TFLOP/s, keyed by torch.cuda.get_device_name():
# fp32 = the CUDA cores, tf32/bf16 = the tensor cores (NVIDIA H100, H200 and A100 datasheets).
PEAK_TFLOPS = {
    "NVIDIA H100 80GB HBM3": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4},
    "NVIDIA H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0},
    "NVIDIA H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4},
    "NVIDIA A100-SXM4-80GB": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
    "NVIDIA A100-SXM4-40GB": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
    "NVIDIA A100 80GB PCIe": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
    "NVIDIA A100-PCIE-40GB": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
}


@dataclass(frozen=True)
class TrainSizes:
    """One device row's shape: width d per model, dictionary F, k, batch B, timed steps."""

    d: int
    dict_size: int
    k: int
    batch: int
    steps: int


GPU_SIZES = tuple(TrainSizes(d=2304, dict_size=f, k=100, batch=4096, steps=20) for f in (16384, 65536, 131072))
GPU_QUICK = (TrainSizes(d=2304, dict_size=16384, k=100, batch=4096, steps=3),)
TINY = (TrainSizes(d=16, dict_size=64, k=4, batch=64, steps=2), TrainSizes(d=16, dict_size=128, k=4, batch=64,
                                                                                  steps=2))


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


def _batches(n: int, batch: int, d: int, seed: int = 0, device: str = "cpu") -> list[torch.Tensor]:
    """Sparse-feature activations for 2 models (shared features plus some per-model ones), made on device."""
    gen = torch.Generator(device=device).manual_seed(seed)
    n_features = 4 * d
    feats = torch.randn(n_features, 2, d, generator=gen, device=device) / d**0.5
    feats[: n_features // 2, 1] = feats[: n_features // 2, 0]  # half shared
    out = []
    for _ in range(n):
        codes = torch.rand(batch, n_features, generator=gen, device=device)
        codes = torch.where(codes > 1 - 16 / n_features, codes, torch.zeros((), device=device))
        x = torch.einsum("bf,fmd->bmd", codes, feats)
        out.append(x * (d**0.5 / x.norm(dim=-1).mean(dim=0))[None, :, None])
    return out


def _sync(device: str) -> Callable[[], None]:
    """What makes a timer honest on ``device``: wait for the queued GPU work (nothing on the CPU)."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else lambda: None


def _time_ours(module: CrossCoder, config: CrosscoderConfig, batches: list[torch.Tensor], device: str = "cpu") -> float:
    optimizer = make_optimizer(module, config)
    state = TrainState(rows_since_fired=torch.zeros(config.dict_size, dtype=torch.int64, device=device))
    sync = _sync(device)
    train_step(module, optimizer, batches[0], state, config)  # warm-up: allocations, kernel compile
    sync()
    start = time.perf_counter()
    for x in batches[1:]:
        train_step(module, optimizer, x, state, config)  # config.precision: bf16 autocasts the forward
    sync()
    return time.perf_counter() - start


def _time_dense(module: DenseCrossCoder, config: CrosscoderConfig, batches: list[torch.Tensor],
                device: str = "cpu") -> float:
    optimizer = torch.optim.Adam(module.parameters(), lr=config.lr, betas=(0.9, 0.999), fused=True)  # as ours

    def step(x: torch.Tensor, lr: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        with autocast(config.precision, device):  # the same precision as ours
            loss = (x - module(x)).pow(2).sum(dim=(1, 2)).mean()
        loss.backward()
        optimizer.step()

    lr_at = lr_schedule(config).at
    sync = _sync(device)
    step(batches[0], lr_at(0))
    sync()
    start = time.perf_counter()
    for i, x in enumerate(batches[1:], start=1):
        step(x, lr_at(i))
    sync()
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
    ours_fve, dense_fve = _held_out_fve(ours, held_out), _held_out_fve(dense, held_out)
    tokens = size["batch"] * size["steps"]
    return {
        "name": f"crosscoder/train/d{size['d']}xF{size['dict_size']}/k{size['k']}/B{size['batch']}",
        "baseline": "dense plain-torch crosscoder (dense decode + autograd backward)",
        "baseline_s": dense_s, "ours_s": ours_s, "ratio": dense_s / ours_s,
        "ours_tokens_per_s": tokens / ours_s, "baseline_tokens_per_s": tokens / dense_s,
        "fve_ours": ours_fve, "fve_baseline": dense_fve,
        "l0": size["k"], "steps_timed": size["steps"], "threads": torch.get_num_threads(),
    }


@torch.no_grad()
def _held_out_fve(module: nn.Module, held_out: torch.Tensor) -> list[float]:
    """Per-model variance explained on a held-out batch, in fp32 (the same evaluation for both)."""
    if isinstance(module, CrossCoder):
        recon = module.decode_sparse(module.encode_sparse(held_out, train=True))
    else:
        recon = module(held_out)
    return [round(v, 4) for v in fve_per_model(held_out, recon)]


def roofline_share(flops: float, seconds: float, device_name: str, precision: str) -> float | None:
    """Fraction of the card's datasheet peak that ``flops`` in ``seconds`` reach (None: card not listed)."""
    peak = PEAK_TFLOPS.get(device_name, {}).get(precision)
    return None if peak is None or seconds <= 0 else flops / seconds / (peak * 1e12)


def device_training_row(device: str, size: TrainSizes, precision: str, batches: list[torch.Tensor],
                        held_out: torch.Tensor) -> dict:
    """Ours vs the dense baseline on ``device`` under ``precision``: time per step, tokens/s, FVE, roofline."""
    config = CrosscoderConfig(dict_size=size.dict_size, k=size.k, batch=size.batch, lr=1e-3, warmup_steps=1,
                              tokens=size.batch * 100, precision=precision)
    ours = CrossCoder.from_config(config, 2, size.d).to(device)  # init on the CPU: both start equal
    dense = DenseCrossCoder(ours)
    with matmul_scope(precision):
        ours_s = _time_ours(ours, config, batches, device) / size.steps
        ours_fve = _held_out_fve(ours, held_out)
        del ours  # the baseline's dense activations need the room at dict 131072
        dense_s = _time_dense(dense, config, batches, device) / size.steps
        dense_fve = _held_out_fve(dense, held_out)
    name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu"
    encoder_flops = 2 * size.batch * 2 * size.d * size.dict_size
    shares = {f"{who}_encoder_roofline": share for who, seconds in (("ours", ours_s), ("baseline", dense_s))
              if (share := roofline_share(encoder_flops, seconds, name, precision)) is not None}
    return make_row(f"crosscoder/train-{torch.device(device).type}/{precision}/d{size.d}xF{size.dict_size}/"
                    f"k{size.k}/B{size.batch}",
                    f"dense plain-torch crosscoder under {precision} (dense decode + autograd backward)",
                    dense_s, ours_s, ours_tokens_per_s=size.batch / ours_s, baseline_tokens_per_s=size.batch / dense_s,
                    fve_ours=ours_fve, fve_baseline=dense_fve, steps_timed=size.steps, precision=precision,
                    device=name, encoder_tflop_per_step=encoder_flops / 1e12, **shares)


def device_training_rows(device: str, sizes: tuple[TrainSizes, ...],
                         precisions: tuple[str, ...] = DEVICE_PRECISIONS) -> list[dict]:
    """Every (size, precision) row on ``device``; a size that does not fit is reported on stderr and skipped."""
    rows = []
    for size in sizes:
        batches = _batches(size.steps + 1, size.batch, size.d, device=device)
        held_out = _batches(1, size.batch, size.d, seed=1, device=device)[0]
        for precision in precisions:
            try:
                rows.append(device_training_row(device, size, precision, batches, held_out))
            except torch.cuda.OutOfMemoryError:
                print(f"crosscoder {precision} F={size.dict_size}: out of device memory, row skipped",
                      file=sys.stderr)
            _free(device)
    return rows


def _free(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def bench_device_training(quick: bool) -> list[dict]:
    """The GPU rows (none without CUDA): dict 16384/65536/131072, d 2304, B 4096, k 100, fp32/TF32/bf16."""
    if not torch.cuda.is_available():
        return []
    return device_training_rows("cuda", GPU_QUICK if quick else GPU_SIZES)


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
    """Training throughput and early-stop collection, then the GPU rows where CUDA is; `quick` shrinks sizes."""
    return [bench_training(quick), bench_collection(quick), *bench_device_training(quick)]


def main(argv: list[str] | None = None) -> int:
    """``--device cuda`` prints the device rows alone (the GPU session's step); ``--tiny`` shrinks them for a CPU."""
    parser = argparse.ArgumentParser(description="crosscoder training rows on one device")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU check of the GPU script)")
    parser.add_argument("--quick", action="store_true", help="dict 16384 only, 3 steps")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu --tiny", file=sys.stderr)
        return 2
    sizes = TINY if args.tiny else GPU_QUICK if args.quick else GPU_SIZES
    rows = device_training_rows(args.device, sizes)
    print(json.dumps({"device": args.device, "rows": rows}, indent=1) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
