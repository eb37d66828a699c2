"""Aligning the tensors of two checkpoints, from metadata only (no tensor is read)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mechdiff.checkpoint.layout import Layout, TensorInfo, config_dims, select_layout
from mechdiff.checkpoint.sources import TensorSource
from mechdiff.errors import InputError

VOCAB_KINDS = frozenset({"embed", "unembed"})
MAX_LISTED = 5


@dataclass(frozen=True)
class TensorPair:
    """One base tensor and its fine-tuned counterpart."""

    name: str
    base_name: str
    ft_name: str
    info: TensorInfo
    base_shape: tuple[int, ...]
    ft_shape: tuple[int, ...]
    expert: int | None = None
    """The expert this pair belongs to (per-expert tensors, and each slice of a fused one)."""
    fused_index: int | None = None
    """For one expert of a fused [experts, ...] tensor: its index on the first axis."""

    @property
    def rows(self) -> slice | None:
        """The range of the stored tensor's first axis this pair compares (None: all of it)."""
        return None if self.fused_index is None else slice(self.fused_index, self.fused_index + 1)

    @property
    def shared_rows(self) -> int:
        """Rows both share (differs from the shape only when a vocabulary grew or shrank)."""
        return min(self.base_shape[0], self.ft_shape[0]) if self.base_shape else 0

    @property
    def numel(self) -> int:
        n = 1
        for dim in self.base_shape:
            n *= dim
        return n


@dataclass
class Pairing:
    """The aligned pairs plus what only one side has."""

    layout: Layout
    pairs: list[TensorPair]
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reshaped: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unclassified: list[str] = field(default_factory=list)
    """Paired tensors neither the layout nor the generic keywords could name (compared as "other")."""


def pair_sources(base: TensorSource, ft: TensorSource) -> Pairing:
    """Align base and fine-tuned tensors by canonical name.

    Args:
        base: the base checkpoint.
        ft: the fine-tuned checkpoint.

    Returns:
        The pairing; vocabulary resizes are paired on their shared rows.

    Raises:
        InputError: the two checkpoints are different architectures.
    """
    layout = select_layout(ft.config or base.config, sorted(set(base.names()) | set(ft.names())))
    _check_configs(layout, base, ft)
    base_by = _by_canonical(layout, base)
    ft_by = _by_canonical(layout, ft)
    _tie_unembedding(layout, base_by, ft_by)
    pairing = Pairing(layout=layout, pairs=[])
    mismatches = []
    for canonical in sorted(set(base_by) | set(ft_by), key=_natural_key):
        if canonical not in ft_by:
            pairing.removed.append(base_by[canonical][0])
            continue
        if canonical not in base_by:
            pairing.added.append(ft_by[canonical][0])
            continue
        pair = _make_pair(base, ft, base_by[canonical], ft_by[canonical])
        if not pair.info.classified:
            pairing.unclassified.append(pair.name)
        if pair.base_shape == pair.ft_shape:
            pairing.pairs += _expert_pairs(pair)
        elif _is_vocab_resize(pair):
            pairing.pairs.append(pair)
            pairing.reshaped.append(
                {"tensor": pair.name, "base_shape": list(pair.base_shape), "ft_shape": list(pair.ft_shape)}
            )
        else:
            mismatches.append(f"{pair.name}: {list(pair.base_shape)} vs {list(pair.ft_shape)}")
    _refuse_mismatches(mismatches, pairing)
    _refuse_layer_mismatch(base_by, ft_by)
    return pairing


def _by_canonical(layout: Layout, source: TensorSource) -> dict[str, tuple[str, TensorInfo]]:
    out: dict[str, tuple[str, TensorInfo]] = {}
    for name in source.names():
        info = layout.describe(name)
        if info is not None:
            out[info.canonical] = (name, info)
    return out


def _tie_unembedding(layout: Layout, base_by: dict, ft_by: dict) -> None:
    """A missing lm_head means the embedding is tied to it; pair against the embedding then."""
    embed, unembed = layout.embed, layout.unembed
    if embed is None or unembed is None:
        return
    for mine, other in ((base_by, ft_by), (ft_by, base_by)):
        if unembed in other and unembed not in mine and embed in mine:
            name, info = mine[embed]
            mine[unembed] = (name, TensorInfo(unembed, info.layer, "unembed", info.orientation, None))


def _make_pair(base: TensorSource, ft: TensorSource, b: tuple[str, TensorInfo], f: tuple[str, TensorInfo]) -> TensorPair:
    base_name, info = b
    ft_name, _ = f
    return TensorPair(ft_name, base_name, ft_name, info, base.meta(base_name).shape, ft.meta(ft_name).shape,
                      expert=info.expert)


def _expert_pairs(pair: TensorPair) -> list[TensorPair]:
    """A fused [experts, out, in] tensor as one pair per expert (experts are units, like heads)."""
    if not pair.info.fused_experts or len(pair.base_shape) != 3:
        return [pair]
    return [
        dataclasses.replace(pair, name=f"{pair.name}[{e}]", base_shape=pair.base_shape[1:],
                            ft_shape=pair.ft_shape[1:], expert=e, fused_index=e)
        for e in range(pair.base_shape[0])
    ]


def _is_vocab_resize(pair: TensorPair) -> bool:
    b, f = pair.base_shape, pair.ft_shape
    return pair.info.kind in VOCAB_KINDS and len(b) == len(f) == 2 and b[1:] == f[1:]


def _check_configs(layout: Layout, base: TensorSource, ft: TensorSource) -> None:
    base_dims, ft_dims = config_dims(layout, base.config), config_dims(layout, ft.config)
    diffs = [f"{k}: {base_dims[k]} vs {ft_dims[k]}" for k in base_dims if k in ft_dims and base_dims[k] != ft_dims[k]]
    if diffs:
        raise InputError(
            f"BASE and FT are different architectures ({'; '.join(diffs[:MAX_LISTED])}); "
            "compare a model with its own fine-tune"
        )


def _refuse_mismatches(mismatches: list[str], pairing: Pairing) -> None:
    if mismatches:
        raise InputError(
            f"BASE and FT are different architectures: {len(mismatches)} tensors differ in shape "
            f"(first: {'; '.join(mismatches[:MAX_LISTED])})"
        )
    if not pairing.pairs:
        raise InputError("BASE and FT share no tensor names; they are not the same model family")


def _refuse_layer_mismatch(base_by: dict, ft_by: dict) -> None:
    base_layers = {info.layer for _, info in base_by.values() if info.layer is not None}
    ft_layers = {info.layer for _, info in ft_by.values() if info.layer is not None}
    if base_layers != ft_layers:
        only = sorted(base_layers ^ ft_layers)[:MAX_LISTED]
        raise InputError(
            f"BASE and FT are different architectures: BASE has {len(base_layers)} layers, FT has "
            f"{len(ft_layers)} (layers on one side only: {only})"
        )


def _natural_key(name: str) -> list:
    import re

    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]
