"""One rank's share of a crosscoder corpus under torchrun: its documents, corpus-wide ids and scales.

Documents are dealt out in turn (rank r takes documents r, r + world, ...), so a token
budget that stops before the end of the corpus covers about the same documents as a
single process would. Each rank keeps corpus indices in its rows' provenance, and the
normalization scales are estimated over every rank's sample, so all ranks normalize alike.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TypeVar

import numpy as np

from mechdiff.diffing.activations.cache import PairedActivations, norm_scales
from mechdiff.diffing.activations.collect import ActivationConfig
from mechdiff.distributed import DistContext, share_of, strided_shard
from mechdiff.errors import InputError

T = TypeVar("T")


def shard_corpus(texts: list[T], config: ActivationConfig, ctx: DistContext) -> tuple[list[T], np.ndarray, ActivationConfig]:
    """This rank's documents, their corpus indices, and its share of the token budget.

    Raises:
        InputError: fewer documents than ranks (a rank would have nothing to read).
    """
    if not ctx.active:
        return texts, np.arange(len(texts), dtype=np.int64), config
    if len(texts) < ctx.world:
        raise InputError(f"the corpus has {len(texts)} documents for {ctx.world} ranks; "
                         f"each rank needs at least one (use fewer ranks)")
    ids = strided_shard(len(texts), ctx)
    return [texts[i] for i in ids], np.asarray(ids, dtype=np.int64), replace(config, max_tokens=share_of(config.max_tokens, ctx))


def globalize(data: PairedActivations, ids: np.ndarray, sample_rows: int, ctx: DistContext) -> PairedActivations:
    """Give a rank's activations corpus-wide document ids and scales shared by all ranks."""
    if not ctx.active:
        return data
    data.doc = ids[data.doc]
    data.doc_global = ids
    data.scales = norm_scales(data.scale_estimate_rows(max(1, share_of(sample_rows, ctx))), ctx)
    return data
