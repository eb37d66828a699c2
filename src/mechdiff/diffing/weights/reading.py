"""Reading tensor pairs into reused host buffers, and one pair ahead of the analysis.

On the CPU the diff reads a pair, then analyzes it: reading one pair ahead, beside the
analysis, made the 1B diff slower on 2 cores (the copy competes with the kernels). On a
GPU the host is idle while the device works, so `PairStream` reads the next pair (into
pinned buffers, then onto the device on a side stream) in a thread of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from mechdiff.checkpoint.fingerprint import note_read
from mechdiff.checkpoint.pairing import TensorPair
from mechdiff.checkpoint.sources import TORCH_DTYPES, TensorSource, read_tensor

if TYPE_CHECKING:
    from typing import Self

NATIVE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class PairReader:
    """Reads pairs into two reused buffers (base, ft), grown to the largest tensor.

    Why: a fresh buffer per tensor faults in every page again (the allocator returns
    large blocks to the OS); reading a 46 MB tensor into a reused buffer took 2.4 ms, into
    a fresh one 4.2-5.5 ms. A pair's tensors are views of the buffers, valid until the
    next `read`. The ft tensor is read in a second thread while this one reads the base:
    all reads of the 1B pair took 0.46 s instead of 0.69 s. (Reading one pair ahead, beside
    the analysis, made the 1B diff slower on 2 cores: the copy competes with the kernels.)
    """

    def __init__(self, base: TensorSource, ft: TensorSource, *, pinned: bool = False) -> None:
        self.base, self.ft = base, ft
        self.pinned = pinned
        """Page-locked buffers (CUDA): the copy to the GPU runs at DMA speed and asynchronously."""
        self._buffers = [np.empty(0, np.uint8), np.empty(0, np.uint8)]
        self._pool: ThreadPoolExecutor | None = None

    def reserve(self, pairs: list[TensorPair]) -> None:
        """Grow both buffers once to the largest of `pairs` (pinned memory is slow to allocate)."""
        for side, source in enumerate((self.base, self.ft)):
            need = max((_nbytes(source, (p.base_name, p.ft_name)[side], p.rows) for p in pairs), default=0)
            self._buffers[side] = _grown_to(self._buffers[side], need, self.pinned)

    def close(self) -> None:
        """End the ft-reading thread (a later `read` starts another)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def read(self, pair: TensorPair) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair's base and ft tensors (see `_matched`), as views of the buffers."""
        for side, (source, name) in enumerate(((self.base, pair.base_name), (self.ft, pair.ft_name))):
            self._buffers[side] = _grown(self._buffers[side], source, name, pair.rows, self.pinned)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="mechdiff-read")
        # the ft read runs beside the base read (file reads release the GIL): nothing else
        # runs during the reads, so the second core copies instead of waiting
        ft_read = self._pool.submit(_read_and_hash, self.ft, pair.ft_name, self._buffers[1], pair.rows)
        try:
            b = _read_and_hash(self.base, pair.base_name, self._buffers[0], pair.rows)
        finally:
            f = ft_read.result()
        if pair.rows is not None:  # one expert of a fused tensor: drop the expert axis
            b, f = b[0], f[0]
        return _matched(b, f, pair)


def _read_and_hash(source: TensorSource, name: str, buffer: np.ndarray, rows: slice | None) -> torch.Tensor:
    """Read a tensor and take its bytes' digest for the source's fingerprint, in the reading thread.

    Why here: the bytes are in cache right after the read, and the two reading threads
    hash base and ft side by side (hashlib releases the GIL). One expert's slice of a
    fused tensor is not the whole tensor: the fingerprint reads those tensors itself.
    """
    tensor = read_tensor(source, name, buffer, rows)
    if rows is None:
        note_read(source, name, tensor)
    return tensor


def _grown(buffer: np.ndarray, source: TensorSource, name: str, rows: slice | None = None,
           pinned: bool = False) -> np.ndarray:
    return _grown_to(buffer, _nbytes(source, name, rows), pinned)


def _grown_to(buffer: np.ndarray, need: int, pinned: bool) -> np.ndarray:
    # uninitialized: the read overwrites it (a zero-filled bytearray cost a pass of its own)
    return buffer if len(buffer) >= need else _host_bytes(need, pinned)


def _nbytes(source: TensorSource, name: str, rows: slice | None) -> int:
    """Bytes a read of `name` (rows of it) takes in a buffer; 0 when the source reads on its own."""
    meta = source.meta(name)
    dtype = TORCH_DTYPES.get(meta.dtype)
    if dtype is None or not hasattr(source, "get_into"):
        return 0
    shape = meta.shape if rows is None or not meta.shape else (len(range(*rows.indices(meta.shape[0]))), *meta.shape[1:])
    return math.prod(shape) * dtype.itemsize


def _host_bytes(n: int, pinned: bool) -> np.ndarray:
    if pinned:  # the numpy view keeps the pinned tensor alive
        return torch.empty(n, dtype=torch.uint8, pin_memory=True).numpy()
    return np.empty(n, np.uint8)


def _matched(b: torch.Tensor, f: torch.Tensor, pair: TensorPair) -> tuple[torch.Tensor, torch.Tensor]:
    """The compared parts of a pair: shared rows after a vocabulary resize, one native dtype."""
    if b.shape != f.shape:  # vocabulary resize: compare the shared rows
        rows = pair.shared_rows
        b, f = b[:rows], f[:rows]
    if b.dtype not in NATIVE_DTYPES or f.dtype not in NATIVE_DTYPES or b.dtype != f.dtype:
        b, f = b.float(), f.float()
    return b, f


@dataclass
class ReadPair:
    """One pair as the analysis gets it."""

    pair: TensorPair
    tensors: tuple[torch.Tensor, torch.Tensor] | None
    """Base and ft on the analysis device (on the host: views of a reader's buffers, valid until
    the next pair is taken); None for a pair that reads itself (streamed)."""


class PairStream:
    """The pairs of one diff, in order, read in the calling thread or one pair ahead.

    Ahead: a reading thread fills one of two readers (double buffers: a pair's views stay
    valid while the analysis uses them) and, on CUDA, copies the pair to the device on a
    side stream; the next read starts when the analysis takes a pair. An error of the
    read of pair k is raised by the iteration, at pair k, as it is without read-ahead;
    on leaving the `with` block (an error, Ctrl-C) the thread finishes its one read and ends.

    Args:
        base, ft: the checkpoints.
        pairs: the pairs in analysis order.
        skip: pairs not read here (yielded with tensors None: the analysis reads them itself).
        device: where `ReadPair.tensors` live (None: the host).
        ahead: read one pair ahead in a thread.
    """

    def __init__(self, base: TensorSource, ft: TensorSource, pairs: list[TensorPair],
                 skip: Callable[[TensorPair], bool], device: torch.device | None, ahead: bool) -> None:
        self.pairs, self.skip, self.device = pairs, skip, device
        cuda = device is not None and device.type == "cuda"
        self.readers = [PairReader(base, ft, pinned=cuda and ahead) for _ in range(2 if ahead else 1)]
        if ahead:
            for reader in self.readers:
                reader.reserve([p for p in pairs if not skip(p)])
        self._side = torch.cuda.Stream(device) if cuda and ahead else None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mechdiff-ahead") if ahead else None

    @property
    def reader(self) -> PairReader:
        """A reader for reads after the stream (the intruder pass)."""
        return self.readers[0]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)  # the read under way finishes first
        for reader in self.readers[1:]:  # the first one serves the reads after the stream
            reader.close()

    def __iter__(self) -> Iterator[ReadPair]:
        if self._pool is None:
            for pair in self.pairs:
                yield self._read(pair, 0)
            return
        pending = self._submit(0) if self.pairs else None
        for k in range(len(self.pairs)):
            assert pending is not None
            current = pending.result()  # re-raises the reading thread's error here, at pair k
            pending = self._submit(k + 1) if k + 1 < len(self.pairs) else None
            self._adopt(current)
            yield current

    def _submit(self, k: int) -> Future:
        assert self._pool is not None
        return self._pool.submit(self._read, self.pairs[k], k % 2)

    def _read(self, pair: TensorPair, slot: int) -> ReadPair:
        if self.skip(pair):
            return ReadPair(pair, None)
        host = self.readers[slot].read(pair)
        if self.device is None or self.device.type != "cuda":
            return ReadPair(pair, host)
        if self._side is None:
            return ReadPair(pair, (host[0].to(self.device), host[1].to(self.device)))
        with torch.cuda.stream(self._side):
            device = (host[0].to(self.device, non_blocking=True), host[1].to(self.device, non_blocking=True))
        self._side.synchronize()  # the copies are done: the pinned buffer may be read into again
        return ReadPair(pair, device)

    def _adopt(self, read: ReadPair) -> None:
        """Tensors made on the side stream are used on the current one (the caching allocator must know)."""
        if self._side is not None and read.tensors is not None:
            for t in read.tensors:
                t.record_stream(torch.cuda.current_stream(self.device))
