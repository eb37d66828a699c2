"""The audit's lenses that run the models, and the findings of every lens merged into one verdict."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from mechdiff.checkpoint.sources import read_config
from mechdiff.diffing.audit.verdict import (
    AuditConfig,
    AuditResult,
    behaviour_findings,
    component_findings,
    crosscoder_findings,
    head_findings,
    merge_findings,
    weight_findings,
)
from mechdiff.diffing.behaviour.kl import BehaviourConfig
from mechdiff.diffing.weights.result import WeightDiff
from mechdiff.distributed import DistContext, rank_device

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


@dataclass
class ModelLenses:
    """What the lenses that run both models found (each None when it did not run)."""

    behaviour: Any = None
    """BehaviourResult of the per-token KL lens."""
    crosscoder: Any = None
    """CrosscoderResult of the crosscoder lens."""
    decomposition: Any = None
    """Decomposition of BASE's chosen modules (components lens)."""
    component_deltas: list = field(default_factory=list)
    """FT's weights expressed in those components, one per module."""
    adl: Any = None
    """ADLResult of the activation-difference lens."""
    logit_diff: Any = None
    """LogitDiffResult of logit-difference mining."""
    amplified: Any = None
    """AmplifiedResult of amplified sampling."""
    causal: Any = None
    """CausalResult of the causal confirmation of weight / head findings."""
    text: str = ""
    """Where the text came from ("" for --data; the self-generated text's description otherwise)."""
    skipped: dict = field(default_factory=dict)
    """Lens name -> why it did not run."""

    def parts(self) -> list:
        """The results-file parts these lenses write (crosscoder, base decomposition, adl, logit_diff, amplified)."""
        return [p for p in (self.crosscoder, self.decomposition, self.adl, self.logit_diff, self.amplified)
                if p is not None]


def audit_findings(diff: WeightDiff, lenses: ModelLenses | None, config: AuditConfig) -> AuditResult:
    """Findings of every lens that ran, merged and ranked into the verdict."""
    matrices = weight_findings(diff, config.thresholds)
    found = {"weights": matrices, "heads": head_findings(diff, config.thresholds, matrices)}
    behaviour = lenses.behaviour if lenses is not None else None
    if behaviour is not None:
        found["behaviour"] = behaviour_findings(behaviour)
    if lenses is not None:
        found.update(_run_lens_findings(lenses, found, config))
    if lenses is not None and lenses.crosscoder is not None:
        found["crosscoder"] = crosscoder_findings(lenses.crosscoder.to_json())
    if lenses is not None and lenses.decomposition is not None:
        found["components"] = component_findings(lenses.component_deltas, decomposition_norms(lenses.decomposition),
                                                 config.thresholds)
    result = merge_findings(found, config.thresholds, config.fail_above, behaviour)
    if lenses is not None:
        result.extra.update(_lens_extras(lenses, result))
    return result


def _run_lens_findings(lenses: ModelLenses, found: dict, config: AuditConfig) -> dict:
    """Findings of the ADL and logit-diff lenses; causal marks on the weight and head findings."""
    from mechdiff.diffing.audit.lens_findings import (
        adl_findings,
        logit_diff_findings,
        mark_causal,
    )

    out = {}
    if lenses.logit_diff is not None:
        corpus_mean = lenses.behaviour.mean_kl if lenses.behaviour is not None else 0.0
        out["logit_diff"] = logit_diff_findings(lenses.logit_diff, (config.behaviour or BehaviourConfig()).min_occurrences,
                                                corpus_mean)
    if lenses.adl is not None:
        out["adl"] = adl_findings(lenses.adl)
    if lenses.causal is not None:
        mark_causal(found["weights"] + found["heads"], lenses.causal)
    return out


def _lens_extras(lenses: ModelLenses, result: AuditResult) -> dict:
    """The audit JSON's adl / logit_diff / amplified / causal entries and where the text came from."""
    from mechdiff.diffing.audit.lens_findings import amplified_tokens, causal_summary

    extra: dict[str, Any] = {"text": lenses.text or "the --data corpus"}
    if lenses.adl is not None:
        extra["adl"] = lenses.adl.to_json()
    if lenses.logit_diff is not None:
        extra["logit_diff"] = lenses.logit_diff.to_json()
    if lenses.amplified is not None:
        extra["amplified"] = lenses.amplified.with_rates(amplified_tokens(result.findings)).to_json()
    if lenses.causal is not None:
        extra["causal"] = causal_summary(result.findings, lenses.causal)
    return extra


def runnable(path: str | os.PathLike | None) -> bool:
    from mechdiff.checkpoint.hub_cache import resolve_model

    if path is None:
        return False
    folder = resolve_model(path)  # a cached model id runs like its snapshot folder
    return folder.is_dir() and (folder / "config.json").is_file()


def samples_text(path: str | os.PathLike) -> bool:
    """BASE can stand in for a corpus: a runnable folder with a tokenizer to decode its samples."""
    from mechdiff.checkpoint.hub_cache import resolve_model

    folder = resolve_model(path)
    return runnable(path) and any((folder / name).is_file() for name in TOKENIZER_FILES)


def run_model_lenses(base: str | os.PathLike, ft: str | os.PathLike, data: str | os.PathLike | None,
                      config: AuditConfig, progress: bool, ctx: DistContext, diff: WeightDiff | None = None,
                      pairing: Any = None) -> ModelLenses | None:
    """Crosscoder, behaviour, components, ADL, logit-diff, amplification and causal lenses on one
    loaded copy of each model. Without ``data`` the text is sampled from the base (no crosscoder).

    The crosscoder comes first: every rank takes part in it; the others are rank 0's.
    """
    from mechdiff.checkpoint.hub_cache import resolve_model
    from mechdiff.diffing.activations.collect import read_texts
    from mechdiff.diffing.crosscoder.pipeline import crosscoder_on_models
    from mechdiff.models import load_model_pair

    device = rank_device((config.behaviour or BehaviourConfig()).device, ctx)
    base_model, ft_model, base_tok, ft_tok = load_model_pair(base, ft, device, progress=progress, dtype=config.dtype)
    text = ""
    if data is not None:
        texts = read_texts(data)
    else:
        from mechdiff.diffing.behaviour.neutral import neutral_texts

        neutral = neutral_texts(base_model, base_tok, config.neutral, device)
        texts, text = neutral.texts, neutral.describe()
    crosscoder = None
    skipped = {} if data is not None else {"crosscoder": "no --data: the self-generated text is too little for a "
                                                         "crosscoder"}
    if config.crosscoder and data is not None:
        model_config = read_config(resolve_model(base)) or {}
        layer = config.crosscoder_layer if config.crosscoder_layer is not None else _middle_layer(model_config)
        cc_config = audit_crosscoder_config(hidden_size(model_config), approx_tokens(texts),
                                            _crosscoder_overrides(config))
        crosscoder = crosscoder_on_models(base_model, ft_model, (base_tok, ft_tok), texts, layer, cc_config,
                                          device=device, progress=progress, ctx=ctx)
    if not ctx.is_main:
        return None
    from mechdiff.diffing.audit.model_lenses import run_difference_lenses

    found = run_difference_lenses(base_model, ft_model, (base_tok, ft_tok), texts, config, diff, pairing, skipped)
    decomposition, deltas = _components_lens(base_model, ft_model, base_tok, texts, config, progress)
    return ModelLenses(found["behaviour"], crosscoder, decomposition, deltas, found["adl"], found["logit_diff"],
                       found["amplified"], found["causal"], text, skipped)


def _components_lens(base_model: object, ft_model: object, tokenizer: object, texts: list[str],
                     config: AuditConfig, progress: bool) -> tuple:
    """SPD of BASE's chosen modules on the data; FT's weights expressed in those components."""
    if not config.components:
        return None, []
    import dataclasses

    from mechdiff.diffing.components.match import delta_in_components
    from mechdiff.weightdecomp.spd.components import find_targets, weight_out_in
    from mechdiff.weightdecomp.spd.config import SPDConfig
    from mechdiff.weightdecomp.spd.hf import decompose_lm

    spd_config = dataclasses.replace(SPDConfig(), steps=config.components_steps, seed=config.seed)
    decomposition = decompose_lm(base_model, tokenizer, list(config.components), "\n".join(texts), spd_config,
                                 progress=progress)
    targets = find_targets(ft_model, list(config.components))
    deltas = [delta_in_components(module, weight_out_in(targets[name], module.kind).detach().float().cpu().numpy())
              for name, module in decomposition.modules.items()]
    return decomposition, deltas


def decomposition_norms(decomposition: object) -> dict:
    """Module -> Frobenius norm of each of its components."""
    return {name: module.norms_C for name, module in decomposition.modules.items()}


def _middle_layer(model_config: dict) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(model_config.get(key), int):
            return model_config[key] // 2
    return 0


def hidden_size(model_config: dict) -> int:
    for key in ("hidden_size", "n_embd", "d_model"):
        if isinstance(model_config.get(key), int):
            return model_config[key]
    return 512


def approx_tokens(texts: list[str]) -> int:
    return int(1.3 * sum(len(t.split()) for t in texts))


def _crosscoder_overrides(config: AuditConfig) -> dict:
    """The audit's seed and options; precision 'auto' follows the models' dtype (bf16 models: bf16 autocast)."""
    from mechdiff.diffing.crosscoder.precision import requested_precision

    options = {"seed": config.seed, **config.crosscoder_options}
    options["precision"] = requested_precision(options.get("precision", "auto"), config.dtype)
    return options


def audit_crosscoder_config(d_model: int, corpus_tokens: int, overrides: dict | None = None) -> object:
    """A crosscoder sized to the model and the corpus: seconds for the demo, hours-not-days for 1B/1M tokens.

    Dictionary 8 x d_model, but at most 16384 and at most one latent per 64 corpus tokens
    (rounded down to a power of two; a latent needs examples to be learned), k = dict/16 within
    [4, 64], two passes over the corpus but at least 600 steps; small dictionaries take a
    larger learning rate.
    """
    from mechdiff.diffing.crosscoder.config import CrosscoderConfig

    by_data = 1 << max(6, (max(corpus_tokens, 1) // 64).bit_length() - 1)
    dict_size = min(16384, 8 * d_model, by_data)
    batch = 256 if d_model < 256 else 4096
    steps = max(600, 2 * corpus_tokens // batch)
    values = {"dict_size": dict_size, "k": max(4, min(64, dict_size // 16)), "batch": batch, "tokens": steps * batch,
              "lr": 3e-3 if dict_size <= 2048 else 1e-4, "warmup_steps": min(1000, steps // 10),
              "dead_after_tokens": 50 * batch}
    return CrosscoderConfig.from_dict({**CrosscoderConfig().to_dict(), **values, **(overrides or {})})


def run_adapter_lenses(base: str | os.PathLike, adapter: str | os.PathLike, data: str | os.PathLike,
                       config: AuditConfig, ctx: DistContext) -> ModelLenses | None:
    """The behaviour lens on BASE + a LoRA adapter as one model, the adapter toggled (no second copy).

    The crosscoder and components lenses hook the same submodules of both models at once,
    which one shared model cannot serve; they do not run for an adapter.
    """
    from mechdiff.adapter_toggle import AdapterToggle
    from mechdiff.checkpoint import LoraSource, open_source
    from mechdiff.diffing.activations.collect import read_texts
    from mechdiff.diffing.behaviour.kl import BehaviourConfig, behaviour_diff
    from mechdiff.models import load_causal_lm

    if not ctx.is_main or config.behaviour is None:
        return None
    model, tokenizer = load_causal_lm(base, rank_device((config.behaviour or BehaviourConfig()).device, ctx),
                                      dtype=config.dtype)
    toggle = AdapterToggle(model, LoraSource(open_source(base), adapter))
    base_view, ft_view = toggle.views()
    return ModelLenses(behaviour=behaviour_diff(base_view, ft_view, (tokenizer, tokenizer), read_texts(data),
                                                config.behaviour))
