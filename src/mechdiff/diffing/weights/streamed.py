"""Large tensor pairs diffed in row blocks, never held whole.

Why: the float32 delta of an 8B model's 128k-token embedding is 2 GB, and holding it
beside both stored tensors took the diff to 3.5x that size. A streamed pair is read in
blocks of rows with positioned reads: one pass gives the fused statistics (combined
over blocks: sums in float64, the histogram per octave, so they equal one whole pass to
float64 round-off), the bytes' digests for the fingerprint and each row's change; the
spectrum then forms D one block at a time for each product of the sketch (a
RowBlockMatrix). Memory is O(block_rows x n + sketch bases) whatever the tensor's size,
at the cost of reading the pair again for every pass (from the page cache, mostly).
"""

from __future__ import annotations

import hashlib
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from mechdiff.checkpoint.fingerprint import remember_digests
from mechdiff.checkpoint.pairing import TensorPair
from mechdiff.checkpoint.sources import TORCH_DTYPES, TensorSource, read_tensor
from mechdiff.kernels import DeltaStats, delta_stats
from mechdiff.kernels.delta_torch import delta_stats_torch
from mechdiff.weightdecomp.spectral.blocked import SIGN_WORD, RowBlockMatrix

_NATIVE = (torch.float32, torch.float16, torch.bfloat16)


def should_stream(base: TensorSource, ft: TensorSource, pair: TensorPair, *, above_bytes: int,
                  heads: bool) -> bool:
    """Whether a pair is diffed in row blocks: a float32 delta above `above_bytes` (0: never),
    a plain [out, in] matrix (Conv1D's transposed storage, one expert of a fused tensor and
    matrices split into heads are analyzed whole), read from files by rows on both sides."""
    if above_bytes <= 0 or len(pair.base_shape) < 2 or pair.rows is not None:
        return False
    if pair.info.orientation == "in_out" or (heads and pair.info.heads is not None) or pair.info.kind == "router":
        return False
    if not (hasattr(base, "get_into") and hasattr(ft, "get_into")):
        return False
    if base.meta(pair.base_name).dtype not in TORCH_DTYPES or ft.meta(pair.ft_name).dtype not in TORCH_DTYPES:
        return False
    return pair.shared_rows * math.prod(pair.base_shape[1:]) * 4 > above_bytes


class StreamedPair:
    """One large pair, read a block of rows at a time into reused buffers.

    Args:
        base: the base checkpoint.
        ft: the fine-tuned checkpoint.
        pair: the pair (see `should_stream`).
        block_bytes: float32 size of one row block of the delta.
    """

    def __init__(self, base: TensorSource, ft: TensorSource, pair: TensorPair, block_bytes: int) -> None:
        self.pair = pair
        self.shape = (pair.shared_rows, math.prod(pair.base_shape[1:]))
        rows = max(SIGN_WORD, block_bytes // (4 * self.shape[1]) // SIGN_WORD * SIGN_WORD)
        self.block_rows = min(rows, -(-self.shape[0] // SIGN_WORD) * SIGN_WORD)
        self._sources = ((base, pair.base_name), (ft, pair.ft_name))
        self._buffers = [_byte_buffer(s, n, self.block_rows, self.shape[1]) for s, n in self._sources]
        self._out = torch.empty(0)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mechdiff-rows")
        self._nonfinite = True  # until the statistics pass has looked

    def close(self) -> None:
        self._pool.shutdown()

    def read(self, start: int, stop: int, digests: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows start..stop of base and ft as [rows, n] in one native dtype (views of the buffers);
        each side's bytes are added to its digest in `digests` when given, in its reading thread."""
        digests = digests or [None, None]
        ft_read = self._pool.submit(self._read_side, 1, start, stop, digests[1])
        try:
            b = self._read_side(0, start, stop, digests[0])
        finally:
            f = ft_read.result()
        if b.dtype not in _NATIVE or f.dtype not in _NATIVE or b.dtype != f.dtype:
            b, f = b.float(), f.float()
        return b, f

    def _read_side(self, side: int, start: int, stop: int, digest=None) -> torch.Tensor:
        source, name = self._sources[side]
        block = read_tensor(source, name, self._buffers[side], slice(start, stop))
        if digest is not None:  # the bytes are in cache right after the read; hashlib releases the GIL
            digest.update(self._buffers[side][: _nbytes(self._sources[side], stop - start, self.shape[1])].data)
        return block.reshape(stop - start, -1)

    def _block_out(self, rows: int) -> torch.Tensor:
        if self._out.numel() < rows * self.shape[1]:
            self._out = torch.empty(self.block_rows * self.shape[1])
        return self._out[: rows * self.shape[1]].view(rows, self.shape[1])

    def statistics(self, n_bins: int, row_norms: bool,
                   on: torch.Tensor | None = None) -> tuple[DeltaStats, torch.Tensor | None]:
        """The fused statistics over all blocks, and each row's ||D_row|| when asked.

        The bytes' digests go to the fingerprint as they pass (when the whole tensor is read).
        With `on` (a float32 tensor of `shape`, on a GPU with room for it), each block is
        moved there and its statistics run in torch ops, leaving all of D in `on`: the host
        holds one block, the spectrum then reads D from device memory instead of forming
        it from the checkpoints again for every product of the sketch.
        """
        stats = None
        norms = torch.empty(self.shape[0], device=None if on is None else on.device) if row_norms else None
        digests = [hashlib.sha256(), hashlib.sha256()]
        for start in range(0, self.shape[0], self.block_rows):
            stop = min(start + self.block_rows, self.shape[0])
            b, f = self.read(start, stop, digests)
            if on is None:
                out = self._block_out(stop - start)
                block = delta_stats(b, f, n_bins=n_bins, out=out)
            else:
                out = on[start:stop]
                block = delta_stats_torch(b.to(on.device), f.to(on.device), n_bins, out=out)
            stats = block if stats is None else stats.combine(block)
            if norms is not None:
                norms[start:stop] = torch.linalg.vector_norm(out, dim=1)
        self._note_digests(digests)
        self._nonfinite = stats.n_excluded > 0
        return stats, norms

    def _note_digests(self, digests: list) -> None:
        pair = self.pair
        if pair.base_shape != pair.ft_shape:  # shared rows only: not the whole tensors' bytes
            return
        for (source, name), digest in zip(self._sources, digests, strict=True):
            remember_digests(source, {name: digest.hexdigest()})

    def delta(self, device: torch.device) -> RowBlockMatrix:
        """D = W_ft - W_base as a RowBlockMatrix (non-finite pairs zeroed, as the statistics do)."""
        return RowBlockMatrix(self.shape, self._delta_block, self.block_rows, device)

    def _delta_block(self, start: int, stop: int) -> torch.Tensor:
        b, f = self.read(start, stop)
        out = self._block_out(stop - start)
        out.copy_(f)
        out.sub_(b)
        if self._nonfinite:
            out.masked_fill_(~(torch.isfinite(b) & torch.isfinite(f)), 0.0)
        return out

    def side(self, which: str, device: torch.device) -> RowBlockMatrix:
        """W_base or W_ft ("base" / "ft") in float32 as a RowBlockMatrix, NaN/Inf zeroed."""
        side = ("base", "ft").index(which)

        def block(start: int, stop: int) -> torch.Tensor:
            out = self._block_out(stop - start)
            out.copy_(self._read_side(side, start, stop))
            return out.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)

        return RowBlockMatrix(self.shape, block, self.block_rows, device)


def _byte_buffer(source: TensorSource, name: str, rows: int, cols: int) -> np.ndarray:
    return np.empty(_nbytes((source, name), rows, cols), np.uint8)


def _nbytes(side: tuple[TensorSource, str], rows: int, cols: int) -> int:
    source, name = side
    return rows * cols * TORCH_DTYPES[source.meta(name).dtype].itemsize
