"""Thin pipeline functions: paths in, results out. The only library code that touches disk."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from mechdiff.checkpoint import LoraSource, open_source, pair_sources
from mechdiff.checkpoint.sources import TensorSource, read_config
from mechdiff.diffing.audit.coverage import AuditInputs, audit_warnings, lens_coverage
from mechdiff.diffing.audit.lenses import (
    approx_tokens,
    audit_crosscoder_config,
    audit_findings,
    hidden_size,
    run_adapter_lenses,
    run_model_lenses,
    runnable,
    samples_text,
)
from mechdiff.diffing.audit.verdict import AuditConfig, AuditResult
from mechdiff.diffing.weights.diff import DiffConfig, diff_sources
from mechdiff.diffing.weights.result import WeightDiff
from mechdiff.distributed import barrier, init_from_env, rank_device, resolve_device
from mechdiff.needs import check_needs
from mechdiff.progress import progress_bar
from mechdiff.store import ResultsWriter, check_output_path
from mechdiff.training import Checkpointing


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
        with results_writer(out_path, base_source, ft_source, command=command) as writer:
            result.write(writer)
    barrier(ctx)
    return result


def results_writer(out_path: Path, base: TensorSource | None = None, ft: TensorSource | None = None, *,
                   command: str | None = None, inputs: dict[str, str] | None = None) -> ResultsWriter:
    """The results writer every command uses: its command line, its inputs and their fingerprints."""
    sources = {name: s for name, s in (("base", base), ("ft", ft)) if s is not None}
    return ResultsWriter(
        out_path,
        command=command or shlex.join(["mechdiff", *sys.argv[1:]]),
        inputs={**{name: s.label for name, s in sources.items()}, **(inputs or {})},
        fingerprints={name: s.fingerprint() for name, s in sources.items()},
    )


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
        data: corpus (.txt, one document per line, or .jsonl with "text") for the lenses that run
            both models (when both are runnable HF folders); without it they read text sampled
            from the base (``config.self_generate``), and the crosscoder does not run.
        adapter: PEFT LoRA adapter over ``base`` as the fine-tune (weight lens, and the behaviour
            lens on one model with the adapter toggled).
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
    check_needs(models=data is not None and runnable(base) and (adapter is not None or runnable(ft)),
                report=report is not None)
    corpus_tokens = 0
    if data is not None:
        from mechdiff.diffing.activations.collect import read_texts

        corpus_tokens = approx_tokens(read_texts(data))  # fails on a bad corpus before the heavy work
    ctx = init_from_env(config.diff.resolved_device().type)
    diff = diff_checkpoints(base, ft, adapter=adapter, config=config.diff, progress=progress)
    given = AuditInputs(data, adapter, runnable(base) and runnable(ft), corpus_tokens)
    lenses = None
    if adapter is None and given.runnable and (data is not None or (config.self_generate and samples_text(base))):
        pairing = pair_sources(*open_pair(base, ft, adapter))
        lenses = run_model_lenses(base, ft, data, config, progress, ctx, diff=diff, pairing=pairing)
    elif data is not None and adapter is not None and runnable(base):
        lenses = run_adapter_lenses(base, adapter, data, config, ctx)
    if not ctx.is_main:
        return None
    result = audit_findings(diff, lenses, config)
    result.lenses, result.warnings = lens_coverage(given, config, lenses, diff), audit_warnings(given, lenses)
    if out_path is not None or report_path is not None:
        out_path = out_path or Path(str(report_path) + ".h5")
        parts = [diff, *(lenses.parts() if lenses is not None else []), result]
        with results_writer(out_path, *open_pair(base, ft, adapter), command=command) as writer:
            for part in parts:
                part.write(writer)
        if report_path is not None:
            from mechdiff.report.html import render_report

            render_report(out_path, report_path)
    return result


def bench_organisms(
    *,
    suite: str = "quick",
    seeds: tuple[int, ...] = (0,),
    cache: str | os.PathLike = ".mechdiff-organisms",
    organisms: str | os.PathLike | None = None,
    gate: float = 1.0,
    crosscoder: bool = False,
    out: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Audit every pair of an organism suite (built and cached locally) or of local manifests, and score it.

    Args:
        suite: "quick" or "full" (ignored with ``organisms``).
        seeds: seeds to build the suite for.
        cache: folder the suite's models are built into and reused from.
        organisms: a manifest file or folder of manifests (organism.json / YAML) to audit instead.
        gate: the audit score above which a pair counts as flagged.
        crosscoder: also run the crosscoder lens.
        out: results file (HDF5, part /bench) to write atomically.
        report: HTML report to write.
        progress: one line per pair on stderr.

    Returns:
        ``BenchResult.to_json()``: per-pair rows and the summary.
    """
    from mechdiff.organisms.bench import BenchConfig, run_bench
    from mechdiff.organisms.manifest import load_manifests

    out_path = check_output_path(out, []) if out is not None else None
    report_path = check_output_path(report, []) if report is not None else None
    manifests = load_manifests(organisms) if organisms is not None else None
    config = BenchConfig(suite=suite, seeds=tuple(seeds), cache=Path(cache), gate=gate, crosscoder=crosscoder)
    result = run_bench(config, audit_checkpoints, manifests, progress=progress)
    if out_path is not None or report_path is not None:
        out_path = out_path or Path(str(report_path) + ".h5")
        with results_writer(out_path, inputs={"suite": str(organisms or suite)}) as writer:
            result.write(writer)
        if report_path is not None:
            from mechdiff.report.html import render_report

            render_report(out_path, report_path)
    return result.to_json()


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
    checkpointing: Checkpointing | None = None,
    device: str = "auto",
    dtype: str = "float32",
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
        checkpointing: save / resume a long run (``mechdiff.training.Checkpointing``).
        device: where the model runs and SPD trains ("auto": a GPU when there is one).
        dtype: dtype ``model`` runs in ("float32", "bfloat16", "float16"); the components train
            in float32. The toy models run in float32 only.

    Returns:
        A JSON-able summary (toy: the ground-truth metrics).
    """
    import dataclasses

    from mechdiff.errors import UsageError
    from mechdiff.weightdecomp.spd.config import SPDConfig

    out_path = check_output_path(out, [p for p in (model, data) if p is not None]) if out is not None else None
    check_needs(models=model is not None)
    changes = {k: v for k, v in (overrides or {}).items() if v is not None}
    if toy is not None and dtype != "float32":
        raise UsageError(f"--dtype {dtype} applies to MODEL; the toy models run in float32")
    device = resolve_device(device)
    if toy is not None:
        from mechdiff.weightdecomp.toys.recipes import TOY_CONFIGS, run_toy

        config = dataclasses.replace(TOY_CONFIGS[toy], seed=seed, **changes)
        report = run_toy(toy, config, seed=seed, progress=progress, checkpointing=checkpointing, device=device)
        part, document = report, report.to_json()
    else:
        from mechdiff.weightdecomp.spd.hf import decompose_hf

        config = dataclasses.replace(SPDConfig(), seed=seed, **changes)
        part = decompose_hf(model, module_globs or [], data, config, progress=progress,
                            checkpointing=checkpointing, device=device, dtype=dtype)
        document = {"modules": list(part.modules), "n_alive": part.n_alive(), "model_dtype": part.model_dtype,
                    "config": part.config.to_dict()}
    if out_path is not None:
        with results_writer(out_path, inputs={"model": str(model or f"toy:{toy}")}) as writer:
            part.write(writer)
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
    device: str = "auto",
    dtype: str = "float32",
    checkpointing: Checkpointing | None = None,
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
        options: CrosscoderConfig fields (None values fall back to sizes fitted to model and corpus),
            e.g. ``seed``.
        device: where the models run and the crosscoder trains ("auto": a GPU when there is one).
        dtype: dtype the models run in.
        checkpointing: save / resume a long training (``mechdiff.training.Checkpointing``).
        progress: progress bars on stderr.

    Returns:
        The crosscoder's JSON summary (counts per class, top ft-only latents with contexts).
    """
    from mechdiff.diffing.activations.collect import read_texts
    from mechdiff.diffing.crosscoder.pipeline import run_crosscoder
    from mechdiff.errors import UsageError

    out_path = check_output_path(out, [base, ft, data]) if out is not None else None
    check_needs(models=True)
    model_config = read_config(Path(base)) or {}
    overrides = {k: v for k, v in (options or {}).items() if v is not None}
    try:
        config = audit_crosscoder_config(hidden_size(model_config), approx_tokens(read_texts(data)), overrides)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    device = resolve_device(device)
    ctx = init_from_env(device)
    result = run_crosscoder(base, ft, data, layer, config, site_kind=site, device=rank_device(device, ctx), dtype=dtype,
                            checkpointing=checkpointing, progress=progress, ctx=ctx)
    if not ctx.is_main:
        barrier(ctx)
        return None
    if out_path is not None:
        with results_writer(out_path, open_source(base), open_source(ft), inputs={"data": str(data)}) as writer:
            result.write(writer)
    barrier(ctx)
    return result.to_json()


def run_lens(
    name: str,
    base: str | os.PathLike,
    ft: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    layer: int | None = None,
    neutral_tokens: int = 10_000,
    device: str = "cpu",
    command: str | None = None,
) -> dict:
    """One lens that runs both models, on its own: ``adl``, ``logit-diff`` or ``amplify``.

    Args:
        name: the lens.
        base: base model folder; ft: fine-tuned model folder (both Hugging Face folders).
        data: corpus (.txt or .jsonl); without it, ``neutral_tokens`` tokens sampled from the base (seed 0).
        out: results file (HDF5) to write atomically (the lens's own part).
        layer: the ADL's layer (default: the middle block).
        neutral_tokens: tokens of self-generated text when no corpus is given.
        device: where the models run.
        command: the command line recorded in the file.

    Returns:
        {"lens", "text", and the lens's JSON under its audit key: "adl", "logit_diff" or "amplified"}.
    """
    from mechdiff.diffing.activations.collect import read_texts
    from mechdiff.diffing.audit.model_lenses import SINGLE_LENSES, run_single_lens
    from mechdiff.diffing.behaviour.neutral import NeutralConfig, neutral_texts
    from mechdiff.errors import InputError, UsageError
    from mechdiff.models import load_model_pair

    if name not in SINGLE_LENSES:
        raise UsageError(f"unknown lens {name!r}; choose one of {', '.join(SINGLE_LENSES)}")
    if not (runnable(base) and runnable(ft)):
        raise InputError("the lens runs both models: BASE and FT must be Hugging Face model folders (config.json)")
    out_path = check_output_path(out, [p for p in (base, ft, data) if p is not None]) if out is not None else None
    texts = read_texts(data) if data is not None else None
    base_model, ft_model, base_tok, ft_tok = load_model_pair(base, ft, device)
    text = "the --data corpus"
    if texts is None:
        neutral = neutral_texts(base_model, base_tok, NeutralConfig(tokens=neutral_tokens), device)
        texts, text = neutral.texts, neutral.describe()
    result = run_single_lens(name, base_model, ft_model, (base_tok, ft_tok), texts, layer, device)
    if out_path is not None:
        with results_writer(out_path, *open_pair(base, ft, None), command=command) as writer:
            result.write(writer)
    key = {"adl": "adl", "logit-diff": "logit_diff", "amplify": "amplified"}[name]
    return {"lens": name, "text": text, key: result.to_json()}
