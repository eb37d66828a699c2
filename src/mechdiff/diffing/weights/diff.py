"""The data-free weight diff: stream tensor pairs, one at a time, through statistics and spectra."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from mechdiff.checkpoint.fingerprint import known_digests, remember_digests
from mechdiff.checkpoint.layout import HeadGeometry, Layout, TensorInfo
from mechdiff.checkpoint.pairing import Pairing, TensorPair, pair_sources
from mechdiff.checkpoint.sources import TORCH_DTYPES, TensorSource
from mechdiff.diffing.weights.experts import routing_change
from mechdiff.diffing.weights.heads import HeadChange, HeadSlice, head_slices
from mechdiff.diffing.weights.reading import (
    NATIVE_DTYPES,
    PairReader,
    PairStream,
    ReadPair,
)
from mechdiff.diffing.weights.readout import ReadoutMatrices, RowTable, Vocabulary
from mechdiff.diffing.weights.result import TensorChange, WeightDiff
from mechdiff.diffing.weights.streamed import StreamedPair, should_stream
from mechdiff.distributed import (
    SINGLE,
    DistContext,
    gather_to_main,
    local_gpu,
    shard_by_size,
)
from mechdiff.kernels import DeltaStats, delta_stats
from mechdiff.kernels.delta_torch import delta_stats_torch
from mechdiff.weightdecomp.spectral import (
    SpectralConfig,
    Spectrum,
    analyze_delta,
    clears_first_cut,
    intruder_dimensions,
    score_1d,
    structured_score,
)

# Machine epsilon (spacing of representable numbers at 1) of the stored dtypes.
DTYPE_EPS = {"F64": 2.0**-52, "F32": 2.0**-23, "F16": 2.0**-10, "BF16": 2.0**-7, "F8_E4M3": 2.0**-3,
             "F8_E5M2": 2.0**-2, "F8_E4M3FNUZ": 2.0**-3, "F8_E5M2FNUZ": 2.0**-2}


@dataclass(frozen=True)
class DiffConfig:
    """Settings of the data-free weight diff."""

    spectral: SpectralConfig = field(default_factory=SpectralConfig)
    """Randomized SVD and noise-bulk settings (k = top singular triplets per matrix)."""
    device: str = "auto"
    """Where spectra run: "cpu", "cuda", or "auto" (cuda when available)."""
    heads: bool = True
    """Score every attention head slice of q/k/v/o (needs head geometry from config.json)."""
    intruder_top: int = 8
    """Count intruder dimensions of W_ft against W_base for this many top-ranked structured
    matrices (a second, short pass: two extra SVDs of full weights each, so not for all)."""
    readout_directions: int = 3
    """Change directions read out as tokens per matrix (at most its rank)."""
    readout_tokens: int = 5
    """Tokens listed per read-out direction."""
    store_vectors: int = 8
    """Singular vector pairs stored per matrix (float16) for later projection."""
    n_bins: int = 64
    """Bins of the |delta| histogram in the fused statistics."""
    stream_above_mb: float = 512.0
    """Matrices whose float32 delta is larger than this many MiB are never held whole: their
    statistics, spectrum and intruder count run over blocks of rows read from the
    checkpoints, and a readout table this large is read in row blocks too (0: never).
    Why 512: an 8B model's 128k-token embedding (2 GB as float32) streams, its 235 MB MLP
    matrices do not, and nothing of a 1B model does (its largest, 250 MB, keeps its speed)."""
    block_mb: float = 64.0
    """Float32 size in MiB of one row block of a streamed matrix."""
    read_ahead: bool | None = None
    """Read the next tensor pair in a thread (into pinned buffers, then onto the GPU) while
    the current one is analyzed. None: on where spectra run on CUDA. Off on the CPU: on 2
    cores reading beside the analysis made the 1B diff slower (the copy competes with it)."""
    device_statistics: bool | None = None
    """Fused statistics, head screens and intruder counts with torch ops on the spectra's
    device (`kernels.delta_torch`) instead of the host's numba loop. None: on for CUDA,
    where copying D back to the host cost more than the statistics."""

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        for name in ("readout_directions", "readout_tokens", "store_vectors", "intruder_top", "stream_above_mb"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not self.block_mb > 0:
            raise ValueError("block_mb must be > 0")
        for name in ("read_ahead", "device_statistics"):
            if getattr(self, name) not in (None, True, False):
                raise ValueError(f"{name} must be true, false or null, got {getattr(self, name)!r}")

    def on_device(self, device: torch.device) -> tuple[bool, bool]:
        """(read ahead, statistics on the device) for spectra on `device`."""
        cuda = device.type == "cuda"
        return (cuda if self.read_ahead is None else self.read_ahead,
                cuda if self.device_statistics is None else self.device_statistics)

    def resolved_device(self, local_rank: int = 0) -> torch.device:
        """The torch device spectra run on (one GPU per rank under torchrun)."""
        if self.device == "auto":
            return torch.device(f"cuda:{local_gpu(local_rank)}" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            from mechdiff.errors import UsageError

            raise UsageError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
        return torch.device(f"cuda:{local_gpu(local_rank)}" if self.device == "cuda" else self.device)


def diff_sources(
    base: TensorSource,
    ft: TensorSource,
    config: DiffConfig | None = None,
    *,
    pairing: Pairing | None = None,
    progress: Callable[[TensorPair], None] | None = None,
    ctx: DistContext | None = None,
) -> WeightDiff | None:
    """Diff two checkpoints tensor by tensor; memory stays O(largest tensor).

    Under torchrun the pairs are sharded across ranks by size; rank 0 gathers and
    returns the result, the other ranks return None.

    Args:
        base: the base checkpoint.
        ft: the fine-tuned checkpoint (or a LoraSource over the base).
        config: diff settings.
        pairing: a precomputed pairing (``pair_sources(base, ft)``), e.g. to check inputs early.
        progress: called after each pair (for progress bars).
        ctx: the distributed context (one rank when None).

    Returns:
        The ranked WeightDiff (None on ranks other than 0).
    """
    config = config or DiffConfig()
    ctx = ctx or SINGLE
    pairing = pairing or pair_sources(base, ft)
    device = config.resolved_device(ctx.local_rank)
    readout = _readout_matrices(base, pairing, _mib(config.stream_above_mb))
    mine = shard_by_size([p.numel for p in pairing.pairs], ctx.world)[ctx.rank]
    ahead, on_device = config.on_device(device)
    workspace = DeltaWorkspace(device if on_device else None)
    stream = PairStream(base, ft, [pairing.pairs[i] for i in mine], lambda p: _streams(base, ft, p, config),
                        device if on_device else None, ahead)
    with stream:
        local = [(index, _analyze_read(read, base, ft, pairing.layout, readout, config, device, workspace, progress))
                 for index, read in zip(mine, stream, strict=True)]
    readout.flush()  # the readouts through streamed tables: one pass over each for all changes
    done = [pairing.pairs[i] for i in mine]
    digests = (known_digests(base, [p.base_name for p in done]), known_digests(ft, [p.ft_name for p in done]))
    gathered = gather_to_main(ctx, (local, digests))
    if gathered is None:
        return None
    for _, (base_digests, ft_digests) in gathered:  # rank 0 fingerprints the models without reading them again
        remember_digests(base, base_digests)
        remember_digests(ft, ft_digests)
    ranked = sorted((x for rank_items, _ in gathered for x in rank_items), key=lambda x: x[0])
    analyzed = [item for _, item in ranked]
    return _assemble(base, ft, pairing, analyzed, config, stream.reader, workspace)


def _analyze_read(read: ReadPair, base: TensorSource, ft: TensorSource, layout: Layout, readout: ReadoutMatrices,
                  config: DiffConfig, device: torch.device, workspace: DeltaWorkspace,
                  progress: Callable[[TensorPair], None] | None) -> tuple[TensorChange, list, list[str]]:
    if read.tensors is None:  # a pair too large to hold: it reads itself in row blocks
        item = _analyze_streamed(base, ft, read.pair, readout, config, device, workspace.device is not None)
    else:
        item = _analyze_pair(*read.tensors, read.pair, layout, readout, config, device, workspace)
    if progress:
        progress(read.pair)
    return item


def _assemble(base: TensorSource, ft: TensorSource, pairing: Pairing, analyzed: list, config: DiffConfig,
              reader: PairReader, workspace: DeltaWorkspace) -> WeightDiff:
    changes, heads, warnings, moved = [], {}, list(pairing.warnings), []
    for change, pair_heads, pair_moved in analyzed:
        changes.append(change)
        moved += pair_moved
        for (part, layer, head, kind), spec in pair_heads:
            heads.setdefault((layer, head, kind), HeadChange(layer, head, kind)).add(part, *spec)
        warnings += _nonfinite_warnings(change)
    _count_intruders(reader, pairing, changes, config, (workspace, DeltaWorkspace(workspace.device)))
    _set_resolutions(base, ft, pairing, changes)
    warnings += [f"{r['tensor']} was resized {r['base_shape']} -> {r['ft_shape']}; shared rows compared"
                 for r in pairing.reshaped]
    if pairing.unclassified:
        listed = ", ".join(pairing.unclassified[:5]) + (", ..." if len(pairing.unclassified) > 5 else "")
        warnings.append(f"could not classify {len(pairing.unclassified)} tensors (compared as 'other', no heads "
                        f"or token readouts): {listed}")
    return WeightDiff(
        base=base.label, ft=ft.label, layout=pairing.layout.name, changes=changes, heads=list(heads.values()),
        added=pairing.added, removed=pairing.removed, reshaped=pairing.reshaped, warnings=warnings,
        moved_tokens=list(dict.fromkeys(moved)), config=_config_json(config), unclassified=pairing.unclassified,
    )


def _set_resolutions(base: TensorSource, ft: TensorSource, pairing: Pairing, changes: list[TensorChange]) -> None:
    """Each change's dtype resolution: the machine epsilon of the coarser of its two stored dtypes
    (the audit never calls a change below the rounding of that dtype a finding)."""
    pairs = {p.name: p for p in pairing.pairs}
    for change in changes:
        pair = pairs.get(change.tensor)
        if pair is not None:
            dtypes = (base.meta(pair.base_name).dtype, ft.meta(pair.ft_name).dtype)
            change.resolution = max(DTYPE_EPS.get(d, 0.0) for d in dtypes)


def _config_json(config: DiffConfig) -> dict:
    return dataclasses.asdict(config)


class DeltaWorkspace:
    """One float32 buffer that every pair's D is written into, grown to the largest tensor.

    Why: a fresh D-sized allocation per tensor is returned to the OS when freed, so every
    page of the next one faults and is zeroed again (a third of the cost of forming D on
    the 1B benchmark). Nothing may keep a view of the buffer past its pair's analysis.
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device
        """Where the buffer lives (None: the host, and the numba statistics fill it)."""
        self._buffer = torch.empty(0, device=device)

    def take(self, shape: torch.Size) -> torch.Tensor:
        """A contiguous float32 tensor of `shape` over the buffer (contents undefined)."""
        n = math.prod(shape)
        if self._buffer.numel() < n:
            self._buffer = torch.empty(0)  # free the old buffer before allocating the new one
            self._buffer = torch.empty(n, device=self.device)
        return self._buffer[:n].view(shape)


def _is_matrix(t: torch.Tensor) -> bool:
    return t.ndim >= 2 and min(t.shape[0], t.numel() // max(t.shape[0], 1)) >= 2


def _analyze_pair(
    b: torch.Tensor, f: torch.Tensor, pair: TensorPair, layout: Layout,
    readout: ReadoutMatrices, config: DiffConfig, device: torch.device, workspace: DeltaWorkspace,
) -> tuple[TensorChange, list, list[str]]:
    stored = workspace.take(b.shape) if _is_matrix(b) else None  # D in storage order, same pass
    if workspace.device is None:
        stats = delta_stats(b, f, n_bins=config.n_bins, out=stored)
    else:  # b, f and D on the device: no copy back for the host loop
        stats = delta_stats_torch(b, f, config.n_bins, out=stored)
    del f
    change = _change_from_stats(pair, stats)
    if stored is None or stats.sum_d2 == 0.0:
        return change, [], []
    delta = _oriented(stored, pair.info)
    spectrum = analyze_delta(delta.to(device), base_norm=stats.norm_base, config=config.spectral, frob2=stats.sum_d2)
    _fill_spectral(change, spectrum, readout, pair.info.kind, config)
    moved = readout.moved_rows(delta, config.readout_tokens) if pair.info.kind in ("embed", "unembed") else []
    if pair.info.kind == "router" and readout.embed is not None:
        top_k = layout.geometry.experts_per_token if layout.geometry else 1
        change.routing = routing_change(readout.embed, _oriented(b, pair.info).cpu(), delta.cpu(), top_k,
                                        readout.vocab, config.readout_tokens)
    heads = _head_changes(pair.info, delta, _oriented(b, pair.info), layout.geometry, config, device) if config.heads else []
    return change, heads, moved


def _mib(size_mb: float) -> int:
    return int(size_mb * 2**20)


def _streams(base: TensorSource, ft: TensorSource, pair: TensorPair, config: DiffConfig) -> bool:
    return should_stream(base, ft, pair, above_bytes=_mib(config.stream_above_mb), heads=config.heads)


def _analyze_streamed(base: TensorSource, ft: TensorSource, pair: TensorPair, readout: ReadoutMatrices,
                      config: DiffConfig, device: torch.device, on_device: bool) -> tuple[TensorChange, list, list[str]]:
    """`_analyze_pair` for a large plain matrix, in row blocks (see streamed.py): no heads, no router.

    With statistics on a GPU that has room for D, D is gathered there block by block (the
    host still holds one block) and the spectrum runs on it whole.
    """
    streamed = StreamedPair(base, ft, pair, _mib(config.block_mb))
    try:
        embedding = pair.info.kind in ("embed", "unembed")
        whole = torch.empty(streamed.shape, device=device) if on_device and _fits(device, streamed.shape) else None
        stats, row_norms = streamed.statistics(config.n_bins, row_norms=embedding, on=whole)
        change = _change_from_stats(pair, stats)
        if stats.sum_d2 == 0.0:
            return change, [], []
        delta = whole if whole is not None else streamed.delta(device)
        spectrum = analyze_delta(delta, base_norm=stats.norm_base, config=config.spectral, frob2=stats.sum_d2)
    finally:
        streamed.close()
    _fill_spectral(change, spectrum, readout, pair.info.kind, config)
    moved = readout.moved_from_norms(row_norms, config.readout_tokens) if embedding else []
    return change, [], moved


def _fits(device: torch.device, shape: tuple[int, int]) -> bool:
    """Whether a float32 matrix of `shape` takes under a quarter of the GPU's free memory
    (the sketch's bases and the next pair's tensors need room beside it)."""
    if device.type != "cuda":
        return False  # on the host, streaming is what keeps memory O(block)
    free, _ = torch.cuda.mem_get_info(device)
    return 4 * math.prod(shape) * 4 < free


def _change_from_stats(pair: TensorPair, stats: DeltaStats) -> TensorChange:
    return TensorChange(
        tensor=pair.name, layer=pair.info.layer, kind=pair.info.kind, score=score_1d(stats.rel_delta),
        rel_delta=stats.rel_delta, rank=0, structured_fraction=0.0, cosine=stats.cosine,
        max_abs_delta=stats.max_abs_d, norm_base=stats.norm_base, norm_delta=stats.norm_d,
        nan_base=stats.nan_base, inf_base=stats.inf_base, nan_ft=stats.nan_ft, inf_ft=stats.inf_ft,
        shape=_out_in_shape(tuple(pair.ft_shape), pair.info), expert=pair.expert,
    )


def _count_intruders(reader: PairReader, pairing: Pairing, changes: list[TensorChange],
                     config: DiffConfig, workspaces: tuple[DeltaWorkspace, DeltaWorkspace]) -> None:
    """Second pass over the few top structured matrices: intruder dimensions of W_ft.

    The float32 copies of W_base and W_ft go into two reused workspaces (the first is the
    main pass's D buffer, free by now): fresh copies of the largest matrices cost more in
    page faults than the conversion itself (0.32 s of the 1B benchmark's intruder pass).
    """
    structured = sorted((c for c in changes if c.rank > 0), key=lambda c: -c.score)[: config.intruder_top]
    pairs = {p.name: p for p in pairing.pairs}
    for change in structured:
        pair = pairs[change.tensor]
        k = min(16, config.spectral.k)
        if _streams(reader.base, reader.ft, pair, config):
            streamed = StreamedPair(reader.base, reader.ft, pair, _mib(config.block_mb))
            try:  # each side in row blocks: two float32 copies of a 2 GB embedding are what streaming avoids
                cpu = torch.device("cpu")  # where the whole-matrix intruder count runs too
                w_base, w_ft = streamed.side("base", cpu), streamed.side("ft", cpu)
                change.n_intruders = len(intruder_dimensions(w_base, w_ft, k=k, seed=config.spectral.seed))
            finally:
                streamed.close()
            continue
        b, f = reader.read(pair)
        w_base, w_ft = (_finite_float(_oriented(t, pair.info), space) for t, space in zip((b, f), workspaces, strict=True))
        change.n_intruders = len(intruder_dimensions(w_base, w_ft, k=k, seed=config.spectral.seed))


def _finite_float(t: torch.Tensor, workspace: DeltaWorkspace) -> torch.Tensor:
    """A float32 copy of t in `workspace`, with NaN/Inf zeroed (valid until its next take)."""
    out = workspace.take(t.shape)
    out.copy_(t)
    return out.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


def _out_in_shape(shape: tuple[int, ...], info: TensorInfo) -> tuple[int, ...]:
    """The stored shape as [out, in] (GPT-2 Conv1D stores [in, out])."""
    return shape[::-1] if info.orientation == "in_out" and len(shape) == 2 else shape


def _oriented(t: torch.Tensor, info: TensorInfo) -> torch.Tensor:
    """A 2-D [out, in] view of a stored tensor (Conv1D transposed, conv kernels flattened)."""
    flat = t.reshape(t.shape[0], -1)
    return flat.T if info.orientation == "in_out" else flat


def _finite_norm(t: torch.Tensor) -> float:
    norm = float(torch.linalg.vector_norm(t, dtype=torch.float64))
    if math.isfinite(norm):
        return norm
    return float(torch.linalg.vector_norm(t.double().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)))


def _fill_spectral(change: TensorChange, spectrum: Spectrum, readout: ReadoutMatrices, kind: str,
                   config: DiffConfig) -> None:
    change.score = spectrum.score
    change.rank = spectrum.rank
    change.structured_fraction = spectrum.structured_fraction
    change.noise_sigma = spectrum.noise_sigma
    change.bulk_edge = spectrum.bulk_edge
    change.stable_rank = spectrum.stable_rank
    change.singular_values = np.asarray(spectrum.singular_values, dtype=np.float32)
    keep = min(config.store_vectors, spectrum.U.shape[1])
    change.U = np.asarray(spectrum.U[:, :keep], dtype=np.float16)
    change.V = np.asarray(spectrum.V[:, :keep], dtype=np.float16)
    if spectrum.rank > 0:
        readout.read_out(change, kind, spectrum.U, spectrum.V, min(spectrum.rank, config.readout_directions),
                         config.readout_tokens)


def _head_changes(
    info: TensorInfo, delta: torch.Tensor, base: torch.Tensor, geometry: HeadGeometry | None,
    config: DiffConfig, device: torch.device,
) -> list:
    """Score every head slice: exact values for all heads at once, the full analysis only where
    a value clears the detection cut (drift-only heads are settled by their values alone)."""
    if info.heads is None or geometry is None or info.layer is None:
        return []
    out = []
    for slices in _same_shape_groups(head_slices(info.heads, info.kind, tuple(delta.shape), geometry), delta):
        out += _scored_slices(info, slices, delta, base, config, device)
    return out


def _same_shape_groups(slices: list[HeadSlice], matrix: torch.Tensor) -> list[list[HeadSlice]]:
    """Slices grouped by block shape, in order (MLA's k and v rows per head differ in size)."""
    groups: dict[tuple[int, ...], list[HeadSlice]] = {}
    for sl in slices:
        groups.setdefault(tuple(sl.take(matrix).shape), []).append(sl)  # a view: no copy
    return list(groups.values())


def _scored_slices(info: TensorInfo, slices: list[HeadSlice], delta: torch.Tensor, base: torch.Tensor,
                   config: DiffConfig, device: torch.device) -> list:
    blocks = _stacked_slices(slices, delta)  # [H, a, b]: the group's slices share one shape
    values, frob2 = _batched_singular_values(blocks)
    out = []
    for sl, block, s_h, f2 in zip(slices, blocks, values, frob2):
        if f2 == 0.0 and not bool(block.any()):  # a float32 trace can underflow; zeros cannot
            continue
        base_norm = _finite_norm(sl.take(base))
        rel = math.sqrt(f2) / base_norm if base_norm > 0 else math.inf
        if clears_first_cut(s_h, tuple(block.shape), f2, config.spectral):
            f2 = _finite_norm(block) ** 2  # the noise level needs the exact energy
            spectrum = analyze_delta(block.to(device), base_norm=base_norm, config=config.spectral, frob2=f2)
            score, rank, rel = spectrum.score, spectrum.rank, spectrum.rel_delta
        else:
            score, rank = structured_score(np.zeros(0), base_norm, rel, config.spectral.drift_weight), 0
        out.append(((sl.part, info.layer, sl.head, sl.group), (score, rank, rel)))
    return out


def _stacked_slices(slices: list[HeadSlice], matrix: torch.Tensor) -> torch.Tensor:
    """[H, a, b] blocks of `matrix`, one per slice: a strided view when the heads tile one
    band of rows or columns in order (every layout we know), a copy otherwise."""
    first, count = slices[0], len(slices)
    if all(sl.cols is None for sl in slices) and _tiles(first.rows, [sl.rows for sl in slices]):
        size = first.rows.stop - first.rows.start
        return matrix[first.rows.start:first.rows.start + count * size].unflatten(0, (count, size))
    if all(sl.rows is None for sl in slices) and _tiles(first.cols, [sl.cols for sl in slices]):
        size = first.cols.stop - first.cols.start
        band = matrix[:, first.cols.start:first.cols.start + count * size]
        return band.unflatten(1, (count, size)).permute(1, 0, 2)
    return torch.stack([sl.take(matrix) for sl in slices])


def _tiles(first: slice | None, parts: list[slice | None]) -> bool:
    if first is None or first.step not in (None, 1):
        return False
    size = first.stop - first.start
    return all(p is not None and p.step in (None, 1) and (p.start, p.stop) == (first.start + i * size,
               first.start + (i + 1) * size) for i, p in enumerate(parts))


def _batched_singular_values(blocks: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Singular values of each [a, b] block, descending, and its squared Frobenius norm.

    Both come from the block's smaller Gram matrix: the values from its eigenvalues, the
    norm from its trace (summed in float64), so the blocks are read once. float32 eigvalsh
    is enough: it gives the top values, all the head screen uses, to ~1e-7 relative.
    """
    gram = blocks @ blocks.mT if blocks.shape[1] <= blocks.shape[2] else blocks.mT @ blocks
    frob2 = gram.diagonal(dim1=1, dim2=2).double().sum(dim=1).tolist()
    eig = torch.linalg.eigvalsh(gram)
    return eig.clamp_min(0.0).sqrt().flip(-1), frob2


def _nonfinite_warnings(change: TensorChange) -> list[str]:
    out = []
    for side, nan, inf in (("FT", change.nan_ft, change.inf_ft), ("BASE", change.nan_base, change.inf_base)):
        if nan or inf:
            out.append(f"{change.tensor}: {side} has {nan} NaN and {inf} Inf values (left out of its statistics)")
    return out


def _readout_matrices(base: TensorSource, pairing: Pairing, stream_above: int) -> ReadoutMatrices:
    """Load the base model's embedding, unembedding and final norm once, for token readouts
    (in their stored dtype: the products upcast row blocks, see readout.rows_times); a table
    whose float32 size is above `stream_above` bytes (when > 0) is read in row blocks instead."""
    layout = pairing.layout
    by_canonical = {p.info.canonical: p for p in pairing.pairs}
    kinds = {p.info.kind: p for p in pairing.pairs}
    embed_pair = by_canonical.get(layout.embed or "") or kinds.get("embed")
    unembed_pair = by_canonical.get(layout.unembed or "") or kinds.get("unembed") or embed_pair
    embed = _table(base, embed_pair.base_name, stream_above) if embed_pair else None
    unembed = gain = None
    if unembed_pair is not None:
        unembed = embed if unembed_pair is embed_pair else _table(base, unembed_pair.base_name, stream_above)
        norm_pair = by_canonical.get(layout.final_norm or "")
        if norm_pair is not None and unembed is not None:
            gain = base.get(norm_pair.base_name).float() + layout.norm_offset
            gain = gain if gain.shape == unembed.shape[1:] else None
    return ReadoutMatrices(embed, unembed, Vocabulary.from_folder(base.folder), unembed_gain=gain)


def _table(base: TensorSource, name: str, stream_above: int) -> torch.Tensor | RowTable:
    meta = base.meta(name)
    dtype = TORCH_DTYPES.get(meta.dtype)
    if (0 < stream_above < math.prod(meta.shape) * 4 and len(meta.shape) >= 2 and hasattr(base, "get_into")
            and dtype in NATIVE_DTYPES):
        return RowTable(base, name)
    return _float_table(base.get(name))


def _float_table(t: torch.Tensor) -> torch.Tensor:
    """A [vocab, d] table kept in a float dtype torch can multiply (upcast only if it is not one)."""
    return t if t.dtype in NATIVE_DTYPES else t.float()
