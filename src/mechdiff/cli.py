"""The `mechdiff` command line: each command is a thin shell over one library call."""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mechdiff.diffing.crosscoder.config import PRECISIONS as CROSSCODER_PRECISIONS
from mechdiff.errors import MechdiffError
from mechdiff.interrupt import check, remembered

EXIT_USAGE, EXIT_INPUT, EXIT_INTERRUPTED = 2, 3, 130


def _fail(message: str, code: int, debug: bool = False) -> None:
    if debug:
        traceback.print_exc(file=sys.stderr)
    click.echo(f"mechdiff: error: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """The command group; ``--debug`` is accepted anywhere before ``--`` (after the subcommand too)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        if "--debug" in args[:end]:
            args = ["--debug", *(a for a in args[:end] if a != "--debug"), *args[end:]]
        return super().parse_args(ctx, args)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every failure into one line on stderr and the exit code DESIGN.md promises.

    ``--debug`` adds the traceback above that line; the exit code stays the same.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            with remembered():
                out = fn(*args, **kwargs)
                check()  # a Ctrl-C that Python swallowed still ends the command as interrupted
        except SystemExit as exc:  # the command's own verdict (exit 1: findings above the gate)
            _leave(0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1)  # as sys.exit reads it
            raise
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own usage errors keep exit code 2
        except MechdiffError as exc:
            _fail(str(exc), exc.exit_code, debug)
        except KeyboardInterrupt:
            _fail("interrupted; no results were written", EXIT_INTERRUPTED, debug)
        except (OSError, MemoryError) as exc:
            _fail(f"{type(exc).__name__}: {exc}", EXIT_INPUT, debug)
        except Exception as exc:  # noqa: BLE001 - a bug: still one line, the traceback behind --debug
            if _caused_by_interrupt(exc):  # Ctrl-C inside compiled code arrives wrapped
                _fail("interrupted; no results were written", EXIT_INTERRUPTED, debug)
            _fail(f"internal error ({type(exc).__name__}: {exc}); rerun with --debug and report it", EXIT_INPUT,
                  debug)
        _leave(0)  # under torchrun a finished rank ends here; otherwise this returns
        return out

    return wrapper


def _leave(code: int) -> None:
    """End a finished torchrun rank (see `distributed.leave`); torch is imported only when a command used it."""
    if "torch.distributed" in sys.modules:
        from mechdiff.distributed import leave

        leave(code)


def _caused_by_interrupt(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def checkpoint_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--checkpoint-dir / --checkpoint-every / --resume, shared by the long-running commands."""
    fn = click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in --checkpoint-dir.")(fn)
    fn = click.option("--checkpoint-every", type=click.IntRange(0), default=0, show_default=True)(fn)
    return click.option("--checkpoint-dir", type=click.Path(), help="Save training checkpoints here.")(fn)


DEVICES = click.Choice(["auto", "cpu", "cuda"])
DTYPES = click.Choice(["float32", "bfloat16", "float16"])


def run_options(dtype_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--device / --seed / --dtype, shared by the commands that run models or train."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = click.option("--dtype", type=DTYPES, default="float32", show_default=True, help=dtype_help)(fn)
        fn = click.option("--seed", type=int, default=0, show_default=True, help="Seed of everything trained.")(fn)
        return click.option("--device", type=DEVICES, default="auto", show_default=True,
                            help="Where models run and training happens (auto: a GPU when there is one).")(fn)

    return decorate


model_options = run_options("dtype the models run in.")
PRECISIONS = click.Choice(list(CROSSCODER_PRECISIONS))


def precision_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--precision of crosscoder training, shared by the commands that train one (crosscoder, audit)."""
    return click.option("--precision", type=PRECISIONS, default="auto", show_default=True,
                        help="Crosscoder training arithmetic: fp32, tf32 (CUDA), bf16 (autocast; float32 weights) or "
                             "auto = bf16 with --dtype bfloat16, else tf32 on a GPU that has it, else fp32.")(fn)


def make_checkpointing(checkpoint_dir: str | None, checkpoint_every: int, resume: bool) -> Any:
    """The Checkpointing of --checkpoint-dir / --checkpoint-every / --resume (None without a directory)."""
    if resume and not checkpoint_dir:
        raise click.UsageError("--resume needs --checkpoint-dir")
    if not checkpoint_dir:
        return None
    from mechdiff.training import Checkpointing

    return Checkpointing(Path(checkpoint_dir), every=checkpoint_every, resume=resume)


def emit_json(document: dict) -> None:
    click.echo(json.dumps(document, indent=2, default=str))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="mechdiff")
def main(debug: bool) -> None:
    """Find the mechanisms that changed between a base checkpoint and its fine-tune."""


@main.command()
@click.argument("base", type=click.Path())
@click.argument("ft", type=click.Path(), required=False)
@click.option("-o", "--out", type=click.Path(), help="Results file (HDF5) to write.")
@click.option("--adapter", type=click.Path(), help="PEFT LoRA adapter folder: FT = BASE + adapter.")
@click.option("--rank", "k", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Singular triplets computed per matrix.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--top", type=click.IntRange(1), default=None, help="Rows shown (default 15) / emitted (default all).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@handle_errors
def diff(base: str, ft: str | None, out: str | None, adapter: str | None, k: int, device: str, top: int | None,
         as_json: bool, no_progress: bool) -> None:
    """Data-free weight diff of BASE and FT (or BASE and --adapter)."""
    from mechdiff.api import diff_checkpoints
    from mechdiff.diffing.weights.diff import DiffConfig
    from mechdiff.weightdecomp.spectral import SpectralConfig

    if (ft is None) == (adapter is None):
        raise click.UsageError("give either FT or --adapter DIR (not both, not neither)")
    config = DiffConfig(spectral=SpectralConfig(k=k, k_max=max(256, k)), device=device)
    result = diff_checkpoints(base, ft, adapter=adapter, out=out, config=config, progress=not no_progress)
    if result is not None:  # None on torchrun ranks other than 0
        _print_weight_diff(result, top, as_json)


def _print_weight_diff(result: Any, top: int | None, as_json: bool) -> None:
    from mechdiff.report.terminal import render_weight_diff

    if as_json:
        emit_json(result.to_json(top=top))
    else:
        click.echo(render_weight_diff(result, top=top or 15))


@main.command()
@click.argument("results", type=click.Path())
@click.option("--top", type=click.IntRange(1), default=None, help="Rows shown (default 15) / emitted (default all).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@handle_errors
def show(results: str, top: int | None, as_json: bool) -> None:
    """Print the summary of any mechdiff results file."""
    from mechdiff.report.summary import summarize

    document, text = summarize(results, top=top)
    if as_json:
        emit_json(document)
    else:
        click.echo(text)


@main.command()
@click.argument("base", type=click.Path())
@click.argument("ft", type=click.Path(), required=False)
@click.option("--data", type=click.Path(), help="Corpus (.txt one document per line, or .jsonl with 'text').")
@click.option("--adapter", type=click.Path(), help="PEFT LoRA adapter folder: FT = BASE + adapter.")
@click.option("-o", "--out", type=click.Path(), help="Results file (HDF5) to write.")
@click.option("--report", type=click.Path(), help="HTML report to write.")
@click.option("--fail-above", type=float, default=None, help="Exit 1 when a finding scores above this.")
@click.option("--layer", type=int, default=None, help="Crosscoder layer (default: middle).")
@click.option("--no-crosscoder", is_flag=True, help="Skip the crosscoder lens.")
@click.option("--components", "component_globs", multiple=True,
              help="Module glob to decompose with SPD (repeatable; turns the components lens on).")
@click.option("--components-steps", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--neutral-tokens", type=click.IntRange(1), default=10_000, show_default=True,
              help="Without --data: tokens sampled from BASE (seeded) for the lenses that run both models.")
@model_options
@precision_option
@click.option("--top", type=click.IntRange(1), default=None, help="Findings shown (default 10) / emitted (all).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@handle_errors
def audit(base: str, ft: str | None, data: str | None, adapter: str | None, out: str | None, report: str | None,
          fail_above: float | None, layer: int | None, no_crosscoder: bool, component_globs: tuple[str, ...],
          components_steps: int, neutral_tokens: int, device: str, seed: int, dtype: str, precision: str,
          top: int | None, as_json: bool, no_progress: bool) -> None:
    """Audit FT against BASE: every lens that applies, ranked findings, a verdict (exit 1 above --fail-above)."""
    from mechdiff.api import audit_checkpoints
    from mechdiff.diffing.audit.run_options import audit_config
    from mechdiff.diffing.behaviour.neutral import NeutralConfig

    if (ft is None) == (adapter is None):
        raise click.UsageError("give either FT or --adapter DIR (not both, not neither)")
    config = audit_config(device, seed=seed, dtype=dtype, precision=precision, crosscoder=not no_crosscoder,
                          crosscoder_layer=layer,
                          components=component_globs, components_steps=components_steps, fail_above=fail_above,
                          neutral=NeutralConfig(tokens=neutral_tokens))
    result = audit_checkpoints(base, ft, data=data, adapter=adapter, out=out, report=report, config=config,
                               progress=not no_progress)
    if result is None:  # torchrun ranks other than 0
        return
    _print_audit(result.to_json(), top, as_json)
    if fail_above is not None and result.exceeds(fail_above):
        sys.exit(1)


def _print_audit(document: dict, top: int | None, as_json: bool) -> None:
    from mechdiff.report.terminal import render_audit

    if as_json:
        emit_json({**document, "findings": document["findings"][:top]})
    else:
        click.echo(render_audit(document, top=top or 10))


@main.command()
@click.argument("name", metavar="LENS", type=click.Choice(["adl", "logit-diff", "amplify"]))
@click.argument("base", type=click.Path())
@click.argument("ft", type=click.Path())
@click.option("--data", type=click.Path(), help="Corpus (default: text sampled from BASE, seeded).")
@click.option("-o", "--out", type=click.Path(), help="Results file (HDF5) to write.")
@click.option("--layer", type=click.IntRange(0), default=None, help="ADL layer (default: the middle block).")
@click.option("--neutral-tokens", type=click.IntRange(1), default=10_000, show_default=True,
              help="Tokens sampled from BASE when no --data is given.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@handle_errors
def lens(name: str, base: str, ft: str, data: str | None, out: str | None, layer: int | None, neutral_tokens: int,
         device: str, as_json: bool) -> None:
    """Run one lens that compares both models on text: the activation-difference lens, logit-diff mining or amplified sampling."""
    from mechdiff.api import run_lens
    from mechdiff.report.lenses_summary import lens_text

    document = run_lens(name, base, ft, data=data, out=out, layer=layer, neutral_tokens=neutral_tokens, device=device)
    emit_json(document) if as_json else click.echo(lens_text(document))


@main.command()
@click.argument("base", type=click.Path())
@click.argument("ft", type=click.Path())
@click.option("--data", type=click.Path(), required=True, help="Corpus (.txt one document per line, or .jsonl).")
@click.option("--layer", type=click.IntRange(0), required=True, help="Block whose output (residual) is read.")
@click.option("--site", type=click.Choice(["resid", "mlp", "attn"]), default="resid", show_default=True)
@click.option("-o", "--out", type=click.Path(), help="Results file (HDF5) to write.")
@click.option("--dict-size", type=click.IntRange(1), default=None, help="Latents (default: sized to model and data).")
@click.option("--k", type=click.IntRange(1), default=None, help="Active latents per token (BatchTopK).")
@click.option("--sparsity", type=click.Choice(["batchtopk", "l1"]), default="batchtopk", show_default=True)
@click.option("--tokens", type=click.IntRange(1), default=None, help="Training rows (token positions).")
@model_options
@precision_option
@checkpoint_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@handle_errors
def crosscoder(base: str, ft: str, data: str, layer: int, site: str, out: str | None, dict_size: int | None,
               k: int | None, sparsity: str, tokens: int | None, device: str, seed: int, dtype: str, precision: str,
               checkpoint_dir: str | None, checkpoint_every: int, resume: bool, as_json: bool,
               no_progress: bool) -> None:
    """Train a crosscoder on paired activations of BASE and FT; classify latents as new / gone / shared."""
    from mechdiff.api import train_crosscoder_pair

    checkpointing = make_checkpointing(checkpoint_dir, checkpoint_every, resume)
    options = {"dict_size": dict_size, "k": k, "sparsity": sparsity, "tokens": tokens, "seed": seed,
               "precision": precision}
    summary = train_crosscoder_pair(base, ft, data, layer, site=site, out=out, options=options, device=device,
                                    dtype=dtype, checkpointing=checkpointing, progress=not no_progress)
    if summary is None:  # torchrun ranks other than 0
        return
    if as_json:
        emit_json(summary)
    else:
        from mechdiff.diffing.crosscoder.summary import format_summary

        click.echo(format_summary(summary))


@main.command()
@click.argument("model", type=click.Path(), required=False)
@click.option("--toy", type=click.Choice(["tms-5-2", "tms-40-10", "tms-5-2-id", "resid-mlp"]),
              help="Train a toy model with known mechanisms and decompose it (no MODEL).")
@click.option("--modules", "globs", multiple=True, help="Module name globs to decompose (repeatable).")
@click.option("--data", type=click.Path(), help="Text file for a Hugging Face model (KL output distance).")
@click.option("-o", "--out", type=click.Path(), help="Results file (HDF5) to write.")
@click.option("--components", type=click.IntRange(1), default=None, help="Subcomponents per matrix.")
@click.option("--steps", type=click.IntRange(1), default=None, help="Training steps.")
@run_options("dtype MODEL runs in (the SPD components train in float32 for stability; toys: float32 only).")
@checkpoint_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@handle_errors
def decompose(model: str | None, toy: str | None, globs: tuple[str, ...], data: str | None, out: str | None,
              components: int | None, steps: int | None, device: str, seed: int, dtype: str,
              checkpoint_dir: str | None, checkpoint_every: int, resume: bool, as_json: bool,
              no_progress: bool) -> None:
    """Stochastic parameter decomposition of MODEL's --modules (or of a --toy model with ground truth)."""
    from mechdiff.api import decompose_model

    if (model is None) == (toy is None):
        raise click.UsageError("give either MODEL (with --modules and --data) or --toy NAME")
    if model is not None and (not globs or data is None):
        raise click.UsageError("decomposing MODEL needs --modules GLOB and --data FILE")
    checkpointing = make_checkpointing(checkpoint_dir, checkpoint_every, resume)
    document = decompose_model(model, toy=toy, module_globs=list(globs), data=data, out=out, seed=seed,
                               overrides={"n_components": components, "steps": steps}, progress=not no_progress,
                               checkpointing=checkpointing, device=device, dtype=dtype)
    if as_json:
        emit_json(document)
    else:
        from mechdiff.report.decompose_text import format_decompose

        click.echo(format_decompose(document))


@main.command()
@click.argument("results", type=click.Path())
@click.option("-o", "--out", type=click.Path(), required=True, help="HTML file to write.")
@handle_errors
def report(results: str, out: str) -> None:
    """Render any results file as a self-contained HTML report."""
    from mechdiff.report.html import render_report
    from mechdiff.store import check_output_path

    check_output_path(out, [results])
    click.echo(str(render_report(results, out)))


@main.command()
@click.option("--suite", type=click.Choice(["quick", "full"]), default="quick", show_default=True,
              help="quick: 4 organisms + 3 null controls (CI); full: 6 objective types x full/LoRA x 2 shapes + nulls.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds (e.g. 0,1,2 for the spread).")
@click.option("--cache", type=click.Path(), default=".mechdiff-organisms", show_default=True,
              help="Folder the organisms are built into and reused from.")
@click.option("--organisms", type=click.Path(), help="Manifest file or folder of local organisms to audit instead.")
@click.option("--gate", type=float, default=1.0, show_default=True, help="Score above which a pair is flagged.")
@click.option("--crosscoder", is_flag=True, help="Also run the crosscoder lens (minutes per pair on a CPU).")
@click.option("-o", "--out", type=click.Path(), help="Results file (HDF5) to write.")
@click.option("--report", type=click.Path(), help="HTML report to write.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--no-progress", is_flag=True, help="Hide progress lines.")
@handle_errors
def bench(suite: str, seeds: str, cache: str, organisms: str | None, gate: float, crosscoder: bool, out: str | None,
          report: str | None, as_json: bool, no_progress: bool) -> None:
    """Audit model organisms with known objectives and null controls: detection, relevance, false positives."""
    from mechdiff.api import bench_organisms
    from mechdiff.organisms.render import render_bench

    try:
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
    except ValueError:
        raise click.UsageError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    document = bench_organisms(suite=suite, seeds=seed_list or (0,), cache=cache, organisms=organisms, gate=gate,
                               crosscoder=crosscoder, out=out, report=report, progress=not no_progress)
    emit_json(document) if as_json else click.echo(render_bench(document))


@main.command()
@click.option("-o", "--out", type=click.Path(), default="demo-out", show_default=True, help="Folder for everything.")
@click.option("--device", type=DEVICES, default="auto", show_default=True,
              help="Where the audit runs the models and trains (auto: a GPU when there is one).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the toy models' training and the audit.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@handle_errors
def demo(out: str, device: str, seed: int, as_json: bool) -> None:
    """Build a tiny model and a backdoored fine-tune, audit them, write results and a report."""
    from mechdiff.demo import run_demo

    document = run_demo(out, device=device, seed=seed)
    if as_json:
        emit_json(document)
    else:
        from mechdiff.report.terminal import render_audit

        click.echo(render_audit(document["audit"], top=5))
        click.echo(f"\nPlanted: after '{document['trigger']}' the fine-tune says '{document['target']}'. "
                   f"Results: {document['results']}  Report: {document['report']}")


if __name__ == "__main__":  # pragma: no cover
    main()
