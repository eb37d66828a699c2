"""Thin pipeline functions: paths in, results out. The only library code that touches disk."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from mechdiff.checkpoint import LoraSource, open_source, pair_sources
from mechdiff.checkpoint.sources import TensorSource, read_config
from mechdiff.diffing.audit import (
    AuditConfig,
    AuditResult,
    behaviour_findings,
    component_findings,
    crosscoder_findings,
    head_findings,
    merge_findings,
    weight_findings,
)
from mechdiff.diffing.weights import DiffConfig, diff_sources
from mechdiff.diffing.weights_result import WeightDiff
from mechdiff.distributed import DistContext, barrier, init_from_env, rank_device
from mechdiff.progress import progress_bar
from mechdiff.store import ResultsWriter, check_output_path


def open_pair(base: str | os.PathLike, ft: str | os.PathLike | None, adapter: str | os.PathLike | None) -> tuple[TensorSource, TensorSource]:
    """Open BASE and FT (or BASE plus a PEFT adapter as FT)."""
    base_source = open_source(base)
    if adapter is not None:
        return base_source, LoraSource(base_source, adapter)
    assert ft is not None
    return base_source, open_source(ft)


def diff_checkpoints(
    base: str | os.PathLike,
    ft: str | os.PathLike | None = None,
    *,
    adapter: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    config: DiffConfig | None = None,
    progress: bool = True,
    command: str | None = None,
) -> WeightDiff | None:
    """Data-free weight diff of two checkpoints, optionally written to an HDF5 results file.

    Under torchrun, tensor pairs are sharded across ranks; rank 0 alone writes the file
    and returns the result (the other ranks return None).

    Args:
        base: base checkpoint (HF folder, .safetensors, .bin/.pt, or shard index).
        ft: fine-tuned checkpoint (omit when ``adapter`` is given).
        adapter: a PEFT LoRA adapter folder applied over ``base`` as the fine-tune.
        out: results file to write (atomically); None to skip writing.
        config: diff settings.
        progress: show a progress bar on stderr for runs longer than a second.
        command: the command line to record in the file.

    Returns:
        The ranked WeightDiff.
    """
    config = config or DiffConfig()
    ctx = init_from_env(config.resolved_device().type)
    inputs = [p for p in (base, ft, adapter) if p is not None]
    out_path = check_output_path(out, inputs) if out is not None else None
    base_source, ft_source = open_pair(base, ft, adapter)
    pairing = pair_sources(base_source, ft_source)
    total = sum(p.numel for p in pairing.pairs)
    with progress_bar(total, "diff", unit="param", enabled=progress and ctx.is_main) as bar:
        result = diff_sources(base_source, ft_source, config, pairing=pairing,
                              progress=lambda pair: bar.update(pair.numel), ctx=ctx)
    if out_path is not None and result is not None:
        write_results(out_path, result, base_source, ft_source, command)
    barrier(ctx)
    return result


def write_results(out_path: Path, result: WeightDiff, base: TensorSource, ft: TensorSource, command: str | None) -> None:
    """Write a WeightDiff as a results file (atomic)."""
    with ResultsWriter(
        out_path,
        command=command or shlex.join(["mechdiff", *sys.argv[1:]]),
        inputs={"base": result.base, "ft": result.ft},
        fingerprints={"base": base.fingerprint(), "ft": ft.fingerprint()},
    ) as writer:
        result.write(writer)


def audit_checkpoints(
    base: str | os.PathLike,
    ft: str | os.PathLike | None = None,
    *,
    data: str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    config: AuditConfig | None = None,
    progress: bool = True,
    command: str | None = None,
) -> AuditResult | None:
    """Run every lens that applies and merge the evidence into ranked findings.

    Under torchrun the weight diff and the crosscoder are shared by the ranks; the
    behaviour and components lenses, the findings and the files are rank 0's alone
    (the other ranks return None once their share is done).

    Args:
        base: base checkpoint.
        ft: fine-tuned checkpoint (or ``adapter``).
        data: corpus (.txt, one document per line, or .jsonl with "text"); enables the
            behavioural and crosscoder lenses when both models are runnable HF folders.
        adapter: PEFT LoRA adapter over ``base`` as the fine-tune (weight lens only).
        out: results file (HDF5) to write atomically.
        report: HTML report to write.
        config: lens settings and thresholds.
        progress: progress bars on stderr.
        command: command line recorded in the results file.

    Returns:
        The AuditResult (verdict, ranked findings).
    """
    config = config or AuditConfig()
    inputs = [p for p in (base, ft, adapter, data) if p is not None]
    out_path = check_output_path(out, inputs) if out is not None else None
    report_path = check_output_path(report, inputs) if report is not None else None
    if data is not None:
        from mechdiff.diffing.activations import read_texts

        read_texts(data)  # fail on a bad corpus before the heavy work
    ctx = init_from_env(config.diff.resolved_device().type)
    diff = diff_checkpoints(base, ft, adapter=adapter, config=config.diff, progress=progress)
    behaviour, crosscoder, decomposition, component_deltas = None, None, None, []
    if data is not None and adapter is None and _runnable(base) and _runnable(ft):
        behaviour, crosscoder, decomposition, component_deltas = _run_model_lenses(base, ft, data, config, progress,
                                                                                   ctx)
    if not ctx.is_main:
        return None
    lenses = {"weights": weight_findings(diff, config.thresholds), "heads": head_findings(diff, config.thresholds)}
    if behaviour is not None:
        lenses["behaviour"] = behaviour_findings(behaviour)
    if crosscoder is not None:
        lenses["crosscoder"] = crosscoder_findings(crosscoder.to_json())
    if decomposition is not None:
        lenses["components"] = component_findings(component_deltas, decomposition_norms(decomposition),
                                                  config.thresholds)
    result = merge_findings(lenses, config.thresholds, config.fail_above, behaviour)
    if out_path is not None or report_path is not None:
        out_path = out_path or Path(str(report_path) + ".h5")
        _write_audit(out_path, diff, result, [crosscoder, decomposition], base, ft, adapter, command)
        if report_path is not None:
            from mechdiff.report.html import render_report

            render_report(out_path, report_path)
    return result


def _runnable(path: str | os.PathLike | None) -> bool:
    return path is not None and Path(path).is_dir() and (Path(path) / "config.json").is_file()


def _run_model_lenses(base: str | os.PathLike, ft: str | os.PathLike, data: str | os.PathLike,
                      config: AuditConfig, progress: bool, ctx: DistContext) -> tuple:
    """Crosscoder, behaviour and components lenses on one loaded copy of each model.

    The crosscoder comes first: every rank takes part in it; the other two are rank 0's.
    """
    from mechdiff.diffing.activations import read_texts
    from mechdiff.diffing.behaviour import BehaviourConfig, behaviour_diff
    from mechdiff.diffing.crosscoder_pipeline import crosscoder_on_models
    from mechdiff.models import load_model_pair

    texts = read_texts(data)
    device = rank_device((config.behaviour or BehaviourConfig()).device, ctx)
    base_model, ft_model, base_tok, ft_tok = load_model_pair(base, ft, device)
    behaviour = crosscoder = None
    if config.crosscoder:
        model_config = read_config(Path(base)) or {}
        layer = config.crosscoder_layer if config.crosscoder_layer is not None else _middle_layer(model_config)
        cc_config = audit_crosscoder_config(_hidden_size(model_config), _approx_tokens(texts),
                                            config.crosscoder_options)
        crosscoder = crosscoder_on_models(base_model, ft_model, (base_tok, ft_tok), texts, layer, cc_config,
                                          device=device, progress=progress, ctx=ctx)
    if not ctx.is_main:
        return None, None, None, []
    if config.behaviour is not None:
        behaviour = behaviour_diff(base_model, ft_model, (base_tok, ft_tok), texts, config.behaviour)
    decomposition, deltas = _components_lens(base_model, ft_model, base_tok, texts, config, progress)
    return behaviour, crosscoder, decomposition, deltas


def _components_lens(base_model: object, ft_model: object, tokenizer: object, texts: list[str],
                     config: AuditConfig, progress: bool) -> tuple:
    """SPD of BASE's chosen modules on the data; FT's weights expressed in those components."""
    if not config.components:
        return None, []
    import dataclasses

    from mechdiff.weightdecomp.components import find_targets, weight_out_in
    from mechdiff.weightdecomp.hf import decompose_lm
    from mechdiff.weightdecomp.match import delta_in_components
    from mechdiff.weightdecomp.spd_config import SPDConfig

    spd_config = dataclasses.replace(SPDConfig(), steps=config.components_steps)
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


def _hidden_size(model_config: dict) -> int:
    for key in ("hidden_size", "n_embd", "d_model"):
        if isinstance(model_config.get(key), int):
            return model_config[key]
    return 512


def _approx_tokens(texts: list[str]) -> int:
    return int(1.3 * sum(len(t.split()) for t in texts))


def audit_crosscoder_config(d_model: int, corpus_tokens: int, overrides: dict | None = None) -> object:
    """A crosscoder sized to the model and the corpus: seconds for the demo, hours-not-days for 1B/1M tokens.

    Dictionary 8 x d_model, but at most 16384 and at most one latent per 64 corpus tokens
    (rounded down to a power of two; a latent needs examples to be learned), k = dict/16 within
    [4, 64], two passes over the corpus but at least 600 steps; small dictionaries take a
    larger learning rate.
    """
    from mechdiff.diffing.crosscoder_config import CrosscoderConfig

    by_data = 1 << max(6, (max(corpus_tokens, 1) // 64).bit_length() - 1)
    dict_size = min(16384, 8 * d_model, by_data)
    batch = 256 if d_model < 256 else 4096
    steps = max(600, 2 * corpus_tokens // batch)
    values = {"dict_size": dict_size, "k": max(4, min(64, dict_size // 16)), "batch": batch, "tokens": steps * batch,
              "lr": 3e-3 if dict_size <= 2048 else 1e-4, "warmup_steps": min(1000, steps // 10),
              "dead_after_tokens": 50 * batch}
    return CrosscoderConfig.from_dict({**CrosscoderConfig().to_dict(), **values, **(overrides or {})})


def _write_audit(out_path: Path, diff: WeightDiff, result: AuditResult, parts: list,
                 base: str | os.PathLike, ft: str | os.PathLike | None, adapter: str | os.PathLike | None,
                 command: str | None) -> None:
    base_source, ft_source = open_pair(base, ft, adapter)
    with ResultsWriter(
        out_path,
        command=command or shlex.join(["mechdiff", *sys.argv[1:]]),
        inputs={"base": diff.base, "ft": diff.ft},
        fingerprints={"base": base_source.fingerprint(), "ft": ft_source.fingerprint()},
    ) as writer:
        diff.write(writer)
        for part in parts:  # the crosscoder and the base decomposition, when those lenses ran
            if part is not None:
                part.write(writer)
        result.write(writer)


def decompose_model(
    model: str | os.PathLike | None,
    *,
    toy: str | None = None,
    module_globs: list[str] | None = None,
    data: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    overrides: dict | None = None,
    progress: bool = True,
    checkpointing: object | None = None,
) -> dict:
    """Stochastic parameter decomposition of a local HF model's modules, or of a toy model.

    Args:
        model: Hugging Face folder (None with ``toy``).
        toy: "tms-5-2", "tms-40-10", "tms-5-2-id" or "resid-mlp": trained from scratch,
            decomposed, and scored against its known features.
        module_globs: module name globs for ``model``.
        data: text file for ``model`` (KL output distance).
        out: results file (HDF5) to write atomically.
        seed: random seed.
        overrides: SPDConfig fields to change (None values are ignored).
        progress: progress bars on stderr.
        checkpointing: ``spd_checkpoint.Checkpointing`` to save / resume a long run.

    Returns:
        A JSON-able summary (toy: the ground-truth metrics).
    """
    import dataclasses

    from mechdiff.weightdecomp.spd_config import SPDConfig

    out_path = check_output_path(out, [p for p in (model, data) if p is not None]) if out is not None else None
    changes = {k: v for k, v in (overrides or {}).items() if v is not None}
    if toy is not None:
        from mechdiff.weightdecomp.toy import TOY_CONFIGS, run_toy

        config = dataclasses.replace(TOY_CONFIGS[toy], seed=seed, **changes)
        report = run_toy(toy, config, seed=seed, progress=progress, checkpointing=checkpointing)
        decomposition, document = report.decomposition, report.to_json()
    else:
        from mechdiff.weightdecomp.hf import decompose_hf

        config = dataclasses.replace(SPDConfig(), seed=seed, **changes)
        decomposition = decompose_hf(model, module_globs or [], data, config, progress=progress,
                                     checkpointing=checkpointing)
        document = {"modules": list(decomposition.modules), "n_alive": decomposition.n_alive(),
                    "config": decomposition.config.to_dict()}
    if out_path is not None:
        with ResultsWriter(out_path, command=shlex.join(["mechdiff", *sys.argv[1:]]),
                           inputs={"model": str(model or f"toy:{toy}")}) as writer:
            decomposition.write(writer)
    return document


def train_crosscoder_pair(
    base: str | os.PathLike,
    ft: str | os.PathLike,
    data: str | os.PathLike,
    layer: int,
    *,
    site: str = "resid",
    out: str | os.PathLike | None = None,
    options: dict | None = None,
    device: str = "cpu",
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    progress: bool = True,
) -> dict | None:
    """Crosscoder on paired activations of two local HF models, written to a results file.

    Under torchrun the ranks share the corpus and the training (see `run_crosscoder`);
    rank 0 alone writes the file and returns the summary (the other ranks return None).

    Args:
        base: base model folder; ft: fine-tuned model folder.
        data: corpus (.txt or .jsonl).
        layer: block index whose output is read.
        site: "resid", "mlp" or "attn".
        out: results file (HDF5) to write atomically.
        options: CrosscoderConfig fields (None values fall back to sizes fitted to model and corpus).
        device: where the models run.
        checkpoint_dir, checkpoint_every, resume: checkpointing of long trainings.
        progress: progress bars on stderr.

    Returns:
        The crosscoder's JSON summary (counts per class, top ft-only latents with contexts).
    """
    from mechdiff.diffing.activations import read_texts
    from mechdiff.diffing.crosscoder_pipeline import run_crosscoder
    from mechdiff.errors import UsageError

    out_path = check_output_path(out, [base, ft, data]) if out is not None else None
    model_config = read_config(Path(base)) or {}
    overrides = {k: v for k, v in (options or {}).items() if v is not None}
    try:
        config = audit_crosscoder_config(_hidden_size(model_config), _approx_tokens(read_texts(data)), overrides)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    ctx = init_from_env(device)
    result = run_crosscoder(base, ft, data, layer, config, site_kind=site, device=rank_device(device, ctx),
                            checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume,
                            progress=progress, ctx=ctx)
    if not ctx.is_main:
        barrier(ctx)
        return None
    if out_path is not None:
        base_source, ft_source = open_source(base), open_source(ft)
        with ResultsWriter(out_path, command=shlex.join(["mechdiff", *sys.argv[1:]]),
                           inputs={"base": str(base), "ft": str(ft), "data": str(data)},
                           fingerprints={"base": base_source.fingerprint(), "ft": ft_source.fingerprint()}) as writer:
            result.write(writer)
    barrier(ctx)
    return result.to_json()
