"""Thin pipeline functions: paths in, results out. The only library code that touches disk."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from mechdiff.checkpoint import LoraSource, open_source, pair_sources
from mechdiff.checkpoint.sources import TensorSource
from mechdiff.diffing.weights import DiffConfig, diff_sources
from mechdiff.diffing.weights_result import WeightDiff
from mechdiff.distributed import barrier, init_from_env
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
