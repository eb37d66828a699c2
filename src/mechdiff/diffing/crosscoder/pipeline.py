"""``mechdiff crosscoder``: load two models, collect paired activations, train, analyse, store.

The only crosscoder code that touches model folders and data files. The CLI
command is a thin shell over :func:`run_crosscoder`; :func:`analyze_crosscoder`
is the same analysis for activations you already have.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mechdiff.diffing.activations.cache import PairedActivations
from mechdiff.diffing.activations.collect import (
    ActivationConfig,
    collect_activations,
    read_texts,
)
from mechdiff.diffing.activations.hooks import ActivationSite
from mechdiff.diffing.crosscoder.config import CrosscoderConfig
from mechdiff.diffing.crosscoder.contexts import context_text
from mechdiff.diffing.crosscoder.eval import CrosscoderEval, evaluate_crosscoder
from mechdiff.diffing.crosscoder.metrics import BASE_ONLY_MAX, FT_ONLY_MIN, SHARED_RANGE
from mechdiff.diffing.crosscoder.module import CrossCoder
from mechdiff.diffing.crosscoder.precision import check_precision, requested_precision
from mechdiff.diffing.crosscoder.shards import globalize, shard_corpus
from mechdiff.diffing.crosscoder.summary import summary_json
from mechdiff.diffing.crosscoder.train import train_crosscoder
from mechdiff.distributed import SINGLE, DistContext, all_gather
from mechdiff.models import load_model_pair
from mechdiff.training import Checkpointing

if TYPE_CHECKING:
    from mechdiff.store.protocol import PartWriter

GROUP = "crosscoder"
CONTEXT_CLASSES = ("ft-only", "base-only")
LEANING_WITH_CONTEXTS = 10  # also keep contexts of the most ft-leaning live latents, whatever their class


@dataclass
class CrosscoderResult:
    """A trained crosscoder with its per-latent analysis, ready to store or print."""

    module: CrossCoder
    """The trained crosscoder (input scale included)."""
    config: CrosscoderConfig
    """Its configuration."""
    site: str
    """Where the activations were read (e.g. 'resid.3')."""
    evaluation: CrosscoderEval
    """Metrics, per-latent table and top-activation provenance."""
    contexts: dict[str, Any]
    """Contexts table: latent, rank, act, doc, pos, text (ft-only, base-only and the most ft-leaning latents)."""
    n_tokens: int
    """Rows (token positions) the crosscoder was trained and evaluated on."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Training log (step, loss, l0, dead, fve per model)."""

    def attrs(self) -> dict[str, Any]:
        """Run attributes stored on /crosscoder."""
        ev = self.evaluation
        return {
            "config": self.config,
            "site": self.site,
            "n_models": self.module.n_models,
            "d_model": self.module.d_model,
            "scale": [float(s) for s in self.module.input_scale_M],
            "threshold": float(self.module.threshold),
            "fve_base": ev.fve[0],
            "fve_ft": ev.fve[1],
            "l0": ev.l0,
            "dead_fraction": ev.dead_fraction,
            "n_tokens": self.n_tokens,
            "class_thresholds": {"ft_only_min": FT_ONLY_MIN, "base_only_max": BASE_ONLY_MAX, "shared": list(SHARED_RANGE)},
        }

    def write(self, writer: PartWriter) -> None:
        """Write group /crosscoder: latents and contexts tables, weights, top contexts, attrs.

        Args:
            writer: an open :class:`mechdiff.store.ResultsWriter`.
        """
        writer.table(f"{GROUP}/latents", self.evaluation.latents)
        writer.table(f"{GROUP}/contexts", self.contexts)
        for name, tensor in (("W_enc", self.module.W_enc_FMD), ("b_enc", self.module.b_enc_F),
                             ("W_dec", self.module.W_dec_FMD), ("b_dec", self.module.b_dec_MD)):
            writer.array(f"{GROUP}/{name}", tensor.detach().cpu().numpy())
        for name in ("top_act", "top_doc", "top_pos"):
            writer.array(f"{GROUP}/{name}", getattr(self.evaluation, name))
        if self.history:
            writer.table(f"{GROUP}/history", {k: [h.get(k, np.nan) for h in self.history] for k in self.history[0]})
        writer.attrs(GROUP, self.attrs())

    def to_json(self, top: int = 10) -> dict[str, Any]:
        """Counts per class and the top ft-only latents with their top contexts."""
        return summary_json(self.evaluation.latents, self.contexts, self.attrs(), top=top)


def analyze_crosscoder(module: CrossCoder, data: PairedActivations, config: CrosscoderConfig, *, site: str,
                       decode: Any = None, top_n: int = 10, history: list[dict[str, float]] | None = None,
                       progress: bool = True, ctx: DistContext = SINGLE) -> CrosscoderResult:
    """Evaluate a trained crosscoder and gather readable contexts.

    Args:
        module: the trained crosscoder.
        data: the paired activations it was trained on (or fresh ones).
        config: its configuration.
        site: description of the activation site.
        decode: token ids -> text (``tokenizer.decode``); None leaves context texts empty.
        top_n: contexts kept per latent.
        history: training log to store.
        progress: bars on stderr.
        ctx: the distributed context (data is this rank's share; every rank gets the whole result).

    Returns:
        The analysed result.
    """
    evaluation = evaluate_crosscoder(module, data, batch=min(config.batch, 8192), top_n=top_n, progress=progress,
                                     ctx=ctx)
    contexts = _contexts(evaluation, data, decode, ctx)
    return CrosscoderResult(module, config, site, evaluation, contexts, evaluation.n_rows,
                            list(history or []))


def _contexts(ev: CrosscoderEval, data: PairedActivations, decode: Any, ctx: DistContext) -> dict[str, Any]:
    cls = ev.latents["cls"].astype(str)
    live = np.nonzero(cls != "dead")[0]
    leaning = live[np.argsort(-ev.latents["delta"][live], kind="stable")[:LEANING_WITH_CONTEXTS]]
    wanted = np.union1d(np.nonzero(np.isin(cls, CONTEXT_CLASSES))[0], leaning)
    cols: dict[str, list[Any]] = {"latent": [], "rank": [], "act": [], "doc": [], "pos": [], "text": []}
    for latent in wanted:
        for rank in range(ev.top_act.shape[1]):
            doc, pos = int(ev.top_doc[latent, rank]), int(ev.top_pos[latent, rank])
            if doc < 0:
                break
            for key, value in zip(cols, (int(latent), rank, float(ev.top_act[latent, rank]), doc, pos, "")):
                cols[key].append(value)
    # each rank reads the contexts of the documents it holds
    for texts in all_gather(ctx, _local_texts(cols["doc"], cols["pos"], data, decode)):
        for row, text in texts.items():
            cols["text"][row] = text
    return {
        "latent": np.asarray(cols["latent"], dtype=np.int64), "rank": np.asarray(cols["rank"], dtype=np.int64),
        "act": np.asarray(cols["act"], dtype=np.float32), "doc": np.asarray(cols["doc"], dtype=np.int64),
        "pos": np.asarray(cols["pos"], dtype=np.int64), "text": np.asarray(cols["text"], dtype=object),
    }


def _local_texts(docs: list[int], positions: list[int], data: PairedActivations, decode: Any) -> dict[int, str]:
    if decode is None:
        return {}
    texts = {}
    for row, (doc, pos) in enumerate(zip(docs, positions)):
        tokens = data.document(doc)
        if tokens is not None:
            texts[row] = context_text(tokens, pos, decode)
    return texts


def run_crosscoder(base_dir: str | Path, ft_dir: str | Path, data_file: str | Path, layer: int,
                   config: CrosscoderConfig | None = None, *, site_kind: str = "resid",
                   activations: ActivationConfig | None = None, device: str = "cpu", top_n: int = 10,
                   checkpointing: Checkpointing | None = None, progress: bool = True,
                   ctx: DistContext = SINGLE, dtype: str = "float32") -> CrosscoderResult:
    """Train a crosscoder on paired activations of two local models and analyse its latents.

    Args:
        base_dir: base model folder (transformers; local files only).
        ft_dir: fine-tuned model folder.
        data_file: text (one document per line) or JSONL with a ``text`` field.
        layer: block index L; activations after (or inside, see site_kind) it.
        config: crosscoder configuration (default CrosscoderConfig()); ``config.tokens`` training rows.
        site_kind: 'resid' (block output), 'mlp' or 'attn'.
        activations: collection settings (default: up to config.tokens rows, memory or a temp cache).
        device: where the models run and the crosscoder trains (``config.precision`` is resolved for it).
        top_n: contexts kept per latent.
        checkpointing: save the training every N steps / continue a saved run.
        progress: progress bars on stderr.
        ctx: the distributed context: under torchrun each rank collects activations of
            every world-th document (its share of config.tokens), training is data-parallel
            and the evaluation is reduced over ranks (see `crosscoder_shards`, `train_step`).
        dtype: dtype the models run in; with ``config.precision`` 'auto', bfloat16 models
            also train the crosscoder under bf16 autocast (see `precision.requested_precision`).

    Returns:
        The result (the same on every rank); ``result.write(writer)`` stores it, ``result.to_json()`` summarises it.

    Raises:
        InputError: unreadable models or data, tokenizer mismatch, layer out of range.
        UsageError: a precision the device cannot run (tf32 off CUDA, bf16 on a GPU without it).
    """
    config = config or CrosscoderConfig()
    config = dataclasses.replace(config, precision=requested_precision(config.precision, dtype))
    check_precision(config.precision, device)  # refuse before the models load, not after collection
    texts = read_texts(data_file)
    base, ft, base_tok, ft_tok = load_model_pair(base_dir, ft_dir, device, progress=progress, dtype=dtype)
    return crosscoder_on_models(base, ft, (base_tok, ft_tok), texts, layer, config, site_kind=site_kind,
                                activations=activations, device=device, top_n=top_n, checkpointing=checkpointing,
                                progress=progress, ctx=ctx)


def crosscoder_on_models(base: Any, ft: Any, tokenizers: tuple[Any, Any], texts: list[str], layer: int,
                         config: CrosscoderConfig | None = None, *, site_kind: str = "resid",
                         activations: ActivationConfig | None = None, device: str = "cpu", top_n: int = 10,
                         checkpointing: Checkpointing | None = None, progress: bool = True,
                         ctx: DistContext = SINGLE) -> CrosscoderResult:
    """`run_crosscoder` on models already loaded (the audit shares them across its lenses).

    Args:
        base: base causal LM; ft: fine-tuned causal LM (any nn.Module the collector can hook).
        tokenizers: (base tokenizer, ft tokenizer); they must agree on the texts.
        texts: documents.
        layer, config, site_kind, activations, device, top_n, checkpointing, progress, ctx:
            as in `run_crosscoder`.

    Returns:
        The analysed result.
    """
    config = config or CrosscoderConfig()
    base_tok, ft_tok = tokenizers
    site = ActivationSite(layer=layer, kind=site_kind)
    with tempfile.TemporaryDirectory(prefix="mechdiff-acts-") as tmp:
        act_config = activations or ActivationConfig(max_tokens=config.tokens, device=device,
                                                     cache_path=Path(tmp) / "activations.h5")
        texts, doc_ids, act_config = shard_corpus(texts, act_config, ctx)
        data = collect_activations(base, ft, (base_tok, ft_tok), texts, site=site, config=act_config,
                                   progress=progress and ctx.is_main)
        data = globalize(data, doc_ids, act_config.scale_sample_rows, ctx)
        trained = train_crosscoder(data, config, checkpointing=checkpointing, progress=progress, ctx=ctx,
                                   device=device)
        config = dataclasses.replace(config, precision=trained.precision)  # the results record what ran
        return analyze_crosscoder(trained.module, data, config, site=site.describe(), decode=base_tok.decode,
                                  top_n=top_n, history=trained.state.history, progress=progress, ctx=ctx)
