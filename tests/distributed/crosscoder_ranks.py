"""Run by tests/distributed/test_dist_crosscoder.py, alone or under torchrun with 2 ranks.

Trains a crosscoder on seeded synthetic activations and evaluates it. Every run sees the
same global batches: under torchrun rank r trains on rows [r*B/W, (r+1)*B/W) of each one,
and evaluates the documents r, r+W, ... Writes its weights and evaluation to OUT/rank<r>.npz.
With "resume", training stops after 2/5 of the steps (checkpoints in OUT/ckpt, written by
rank 0) and a second call continues from the checkpoint; the steps each call ran are saved
as ``steps_first`` / ``steps``.

    python crosscoder_ranks.py OUT SPARSITY [resume]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mechdiff.diffing.activations.cache import PairedActivations, norm_scales
from mechdiff.diffing.crosscoder.config import CrosscoderConfig
from mechdiff.diffing.crosscoder.eval import evaluate_crosscoder
from mechdiff.diffing.crosscoder.train import train_crosscoder
from mechdiff.distributed import init_from_env, leave
from mechdiff.training import Checkpointing

N_DOCS, DOC_LEN, D_MODEL, GLOBAL_BATCH = 48, 16, 12, 64


def synthetic_rows() -> torch.Tensor:
    """[N, 2, D]: sparse features shared by both models, a few rewritten and a few only the second one has."""
    gen = torch.Generator().manual_seed(0)
    n_rows = N_DOCS * DOC_LEN
    feats_base, feats_ft = torch.randn(24, D_MODEL, generator=gen), torch.randn(24, D_MODEL, generator=gen)
    feats_ft[:16] = feats_base[:16]
    feats_base[20:] = 0
    codes = torch.rand(n_rows, 24, generator=gen) * (torch.rand(n_rows, 24, generator=gen) < 0.1)
    return torch.stack([codes @ feats_base, codes @ feats_ft], dim=1)


@dataclass
class GlobalBatches:
    """The same sequence of global batches for every world size; each rank takes its slice."""

    acts: torch.Tensor
    rank: int
    world: int

    scales = property(lambda self: norm_scales(self.acts))
    d_model = property(lambda self: self.acts.shape[2])
    n_models = property(lambda self: self.acts.shape[1])

    def iter_batches(self, batch: int, seed: int, start_step: int = 0):
        assert batch * self.world == GLOBAL_BATCH
        gen = torch.Generator().manual_seed(123)
        step = 0
        while True:
            order = torch.randperm(self.acts.shape[0], generator=gen)
            for lo in range(0, len(order) - GLOBAL_BATCH + 1, GLOBAL_BATCH):
                if step >= start_step:
                    yield self.acts[order[lo + self.rank * batch: lo + (self.rank + 1) * batch]]
                step += 1


def my_documents(acts: torch.Tensor, rank: int, world: int) -> PairedActivations:
    """This rank's documents (rank, rank + world, ...) with corpus-wide document ids."""
    docs = np.arange(rank, N_DOCS, world)
    rows = (docs[:, None] * DOC_LEN + np.arange(DOC_LEN)).ravel()
    tokens = [np.arange(DOC_LEN, dtype=np.int64) + d for d in docs]
    return PairedActivations(acts[rows], np.repeat(docs, DOC_LEN), np.tile(np.arange(DOC_LEN), len(docs)),
                             np.concatenate(tokens), norm_scales(acts), tokens, doc_global=docs)


def main(out: Path, sparsity: str, resume: bool) -> None:
    ctx = init_from_env("cpu")
    torch.set_num_threads(1)
    acts = synthetic_rows()
    config = CrosscoderConfig(dict_size=32, k=4, sparsity=sparsity, lr=1e-2, warmup_steps=5, batch=GLOBAL_BATCH,
                              tokens=GLOBAL_BATCH * 150, dead_after_tokens=GLOBAL_BATCH * 3, aux_k=8, l1_coeff=1.0)
    source = GlobalBatches(acts, ctx.rank, ctx.world)
    steps_first: list[int] = []
    if resume:
        train_crosscoder(source, config, checkpointing=Checkpointing(out / "ckpt", every=20,
                                                                     stop_after=config.steps * 2 // 5),
                         progress=False, ctx=ctx, on_step=lambda step, _: steps_first.append(step))
    steps: list[int] = []
    trained = train_crosscoder(source, config, checkpointing=Checkpointing(out / "ckpt", resume=True) if resume else None,
                               progress=False, ctx=ctx, on_step=lambda step, _: steps.append(step))
    ev = evaluate_crosscoder(trained.module, my_documents(acts, ctx.rank, ctx.world), batch=100, top_n=5,
                             progress=False, ctx=ctx)
    arrays = {name: tensor.detach().numpy() for name, tensor in trained.module.state_dict().items()}
    arrays |= {f"latents_{k}": v for k, v in ev.latents.items() if v.dtype != object}
    arrays |= {"fve": np.asarray(ev.fve), "l0": np.asarray(ev.l0), "n_rows": np.asarray(ev.n_rows),
               "top_act": ev.top_act, "top_doc": ev.top_doc, "top_pos": ev.top_pos,
               "rows_since_fired": trained.state.rows_since_fired.numpy(),
               "loss": np.asarray([h["loss"] for h in trained.state.history]),
               "steps_first": np.asarray(steps_first, dtype=np.int64), "steps": np.asarray(steps, dtype=np.int64)}
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / f"rank{ctx.rank}.npz", **arrays)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:] == ["resume"])
    leave()  # as the CLI does: a finished rank exits without C++ teardown
