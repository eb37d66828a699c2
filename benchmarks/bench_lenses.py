"""Cost of the activation-difference lens and logit-difference mining against the behaviour lens.

Both models are the toy factory's ``small`` GPT-2 (d 256, 4 blocks; the fine-tune is the base
with 1% noise on every matrix: the cost does not depend on what changed). The text is 10k
positions sampled from the base (the audit's data-free path; ``--quick``: 2k). Measured in one
process, in turns:
- baseline: the behaviour lens (one forward pass of both models over the text, per-token KL);
- ours: what ADL + logit-diff add to the audit: the behaviour pass with logit-diff mining fed
  from it, minus the plain behaviour pass, plus the whole ADL (mean difference over the first 5
  positions, logit lens, patchscope, steering with its alpha search).
A ratio >= 1 means ADL + logit-diff cost at most one forward pass of both models over the text.
The second row compares the same extra cost with bare forward passes of both models.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from harness import time_alternating

from mechdiff.diffing.activations.collect import pad_batch
from mechdiff.diffing.behaviour.adl import activation_difference
from mechdiff.diffing.behaviour.kl import BehaviourConfig, behaviour_diff, paired_docs
from mechdiff.diffing.behaviour.logit_diff import LogitDiffAccumulator
from mechdiff.diffing.behaviour.neutral import NeutralConfig, neutral_texts
from mechdiff.models import load_causal_lm
from mechdiff.toylm.language import LanguageConfig, make_language
from mechdiff.toylm.model import SIZE_PRESETS, make_model
from mechdiff.toylm.tokenizer import build_tokenizer, save_tokenizer, special_ids


def _pair(folder: Path) -> tuple:
    lang = make_language(LanguageConfig(), seed=0)
    tok = build_tokenizer(lang.words)
    size = SIZE_PRESETS["small"]
    base = make_model("gpt2", size, tok.get_vocab_size(), special_ids(tok), seed=0).eval()
    base.save_pretrained(str(folder))
    save_tokenizer(tok, folder, size.max_len)
    base, tokenizer = load_causal_lm(folder)
    ft = copy.deepcopy(base)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ft.parameters():
            if p.ndim == 2:
                p += 0.01 * p.norm() / p.numel() ** 0.5 * torch.randn(p.shape, generator=g)
    return base, ft, tokenizer


def run(quick: bool) -> list[dict]:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        base, ft, tok = _pair(Path(tmp))
    tokens = 2_000 if quick else 10_000
    texts = neutral_texts(base, tok, NeutralConfig(tokens=tokens)).texts
    config = BehaviourConfig(batch_docs=32)
    docs = paired_docs(base, ft, tok, texts, config.ctx_len)

    def behaviour() -> None:
        behaviour_diff(base, ft, tok, texts, config)

    def with_mining() -> None:
        mining = LogitDiffAccumulator()
        behaviour_diff(base, ft, tok, texts, config, observers=(mining,))
        mining.result(docs, str)  # ranking and NMF topics are part of the cost

    def adl() -> None:
        activation_difference(base, ft, tok, texts)

    @torch.no_grad()
    def forward_only() -> None:
        for start in range(0, len(docs), config.batch_docs):
            ids, mask = pad_batch(docs[start:start + config.batch_docs], 0, "cpu")
            base(input_ids=ids, attention_mask=mask)
            ft(input_ids=ids, attention_mask=mask)

    repeat = 1 if quick else 3
    behaviour_s, mining_s, adl_s, forward_s = time_alternating([behaviour, with_mining, adl, forward_only],
                                                               repeat=repeat, warmup=1)
    extra_s = max(mining_s - behaviour_s, 0.0) + adl_s
    positions = int(sum(len(d) for d in docs))
    common = {"positions": positions, "adl_s": adl_s, "mining_extra_s": mining_s - behaviour_s}
    return [
        {"name": f"ADL + logit-diff vs behaviour lens ({positions} positions)",
         "baseline": "behaviour lens (one forward pass of both models + per-token KL)",
         "baseline_s": behaviour_s, "ours_s": extra_s, "ratio": behaviour_s / extra_s, **common},
        {"name": f"ADL + logit-diff vs bare forward passes ({positions} positions)",
         "baseline": "forward pass of both models over the text",
         "baseline_s": forward_s, "ours_s": extra_s, "ratio": forward_s / extra_s, **common},
    ]


if __name__ == "__main__":  # pragma: no cover
    for row in run(quick=False):
        print(row)
