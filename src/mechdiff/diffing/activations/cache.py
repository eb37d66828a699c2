"""Paired activations kept in memory or in an on-disk HDF5 cache, streamed back in shuffled chunks.

Rows are token positions; each row holds both models' activations [M, D] plus
where it came from (document, position, token id). The stream is an endless
sequence of shuffled passes: each pass visits the chunks in a seeded random
order and each chunk's rows in a seeded random order. Only one chunk is in
memory at a time, and the order depends only on the seed, so a resumed run
can skip to any batch without reading the data it skips.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from mechdiff.distributed import SINGLE, DistContext, all_reduce
from mechdiff.errors import InputError

_ORDER_SEED_STRIDE = 1_000_003  # seeds of consecutive passes must not collide across run seeds


@dataclass
class PairedActivations:
    """Activations of M models at the same tokens, plus provenance of every row.

    Attributes:
        acts: [N, M, D] tensor (in memory) or an h5py dataset (disk cache), raw (unnormalized).
        doc: [N] int64 document index of each row.
        pos: [N] int64 position of the row's token in its document.
        token: [N] int64 token id.
        scales: [M] multiplier per model that brings the mean activation norm to sqrt(D).
        documents: token ids of every document held here (for showing contexts).
        chunk_rows: rows per shuffled chunk when streaming.
        doc_global: corpus index of each entry of `documents` when this holds one rank's
            share of a corpus (None: documents[i] is document i); `doc` holds corpus indices.
    """

    acts: torch.Tensor | h5py.Dataset
    doc: np.ndarray
    pos: np.ndarray
    token: np.ndarray
    scales: torch.Tensor
    documents: list[np.ndarray]
    chunk_rows: int = 65536
    doc_global: np.ndarray | None = None

    def document(self, doc_id: int) -> np.ndarray | None:
        """Token ids of corpus document doc_id, or None when it is not held here."""
        if self.doc_global is None:
            return self.documents[doc_id] if 0 <= doc_id < len(self.documents) else None
        where = np.searchsorted(self.doc_global, doc_id)
        if where < len(self.doc_global) and self.doc_global[where] == doc_id:
            return self.documents[where]
        return None

    @property
    def n_rows(self) -> int:
        return int(self.acts.shape[0])

    @property
    def n_models(self) -> int:
        return int(self.acts.shape[1])

    @property
    def d_model(self) -> int:
        return int(self.acts.shape[2])

    @property
    def on_disk(self) -> bool:
        return isinstance(self.acts, h5py.Dataset)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Raw activations [stop - start, M, D] as float32, in storage order."""
        if self.on_disk:
            return torch.from_numpy(np.asarray(self.acts[start:stop], dtype=np.float32))
        return self.acts[start:stop].float()

    def iter_rows(self, batch: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row index, raw [b, M, D]) over all rows once, in storage order."""
        for start in range(0, self.n_rows, batch):
            yield start, self.rows(start, min(start + batch, self.n_rows))

    def iter_batches(self, batch: int, seed: int, start_step: int = 0) -> Iterator[torch.Tensor]:
        """Endless shuffled raw batches [batch, M, D]; batch number start_step comes first.

        Args:
            batch: rows per batch.
            seed: order seed (same seed, same order).
            start_step: batches to skip (resuming); skipped chunks are not read.

        Returns:
            An iterator of float32 tensors.
        """
        skip = start_step * batch
        pending: list[torch.Tensor] = []
        pending_rows = 0
        for chunk_rows in self._shuffled_chunks(seed):
            if skip >= chunk_rows.numel():
                skip -= chunk_rows.numel()
                continue
            pending.append(self._gather(chunk_rows[skip:]))
            pending_rows += pending[-1].shape[0]
            skip = 0
            while pending_rows >= batch:
                joined = torch.cat(pending) if len(pending) > 1 else pending[0]
                yield joined[:batch]
                pending = [joined[batch:]]
                pending_rows -= batch

    def _shuffled_chunks(self, seed: int) -> Iterator[torch.Tensor]:
        chunk = self.chunk_rows if self.on_disk else self.n_rows
        starts = list(range(0, self.n_rows, chunk))
        epoch = 0
        while True:
            gen = torch.Generator().manual_seed(seed * _ORDER_SEED_STRIDE + epoch)
            for c in torch.randperm(len(starts), generator=gen).tolist():
                size = min(chunk, self.n_rows - starts[c])
                yield starts[c] + torch.randperm(size, generator=gen)
            epoch += 1

    def _gather(self, row_ids: torch.Tensor) -> torch.Tensor:
        if not self.on_disk:
            return self.acts[row_ids].float()
        lo, hi = int(row_ids.min()), int(row_ids.max()) + 1
        block = torch.from_numpy(np.asarray(self.acts[lo:hi], dtype=np.float32))
        return block[row_ids - lo]

    def scale_estimate_rows(self, max_rows: int) -> torch.Tensor:
        """A strided sample of at most max_rows raw rows [n, M, D] spread over the whole run."""
        stride = max(1, self.n_rows // max_rows)
        if self.on_disk:
            return torch.from_numpy(np.asarray(self.acts[::stride], dtype=np.float32))
        return self.acts[::stride].float()


def from_tensor(acts_NMD: torch.Tensor, scale_sample_rows: int = 20_000) -> PairedActivations:
    """Wrap activations you already have [N, M, D] (one document, positions 0..N-1, token ids unknown = -1)."""
    n_rows = acts_NMD.shape[0]
    acts = PairedActivations(
        acts_NMD.float(), np.zeros(n_rows, dtype=np.int64), np.arange(n_rows, dtype=np.int64),
        np.full(n_rows, -1, dtype=np.int64), torch.ones(acts_NMD.shape[1]), [],
    )
    acts.scales = norm_scales(acts.scale_estimate_rows(scale_sample_rows))
    return acts


def norm_scales(sample_BMD: torch.Tensor, ctx: DistContext = SINGLE) -> torch.Tensor:
    """[M] multipliers sqrt(D) / mean ||x^m|| estimated on a sample [n, M, D].

    Under torchrun the mean runs over every rank's sample, so all ranks normalize alike.

    Raises:
        InputError: a model's sampled activations are all zero.
    """
    norms_nM = sample_BMD.norm(dim=-1)
    if ctx.active:
        sums = torch.cat([norms_nM.double().sum(dim=0), torch.tensor([norms_nM.shape[0]], dtype=torch.float64)])
        sums = all_reduce(ctx, sums)
        mean_norm_M = (sums[:-1] / sums[-1]).float()
    else:
        mean_norm_M = norms_nM.mean(dim=0)
    if not bool(torch.all(mean_norm_M > 0)):
        raise InputError("activations are all zero for a model; cannot normalize")
    return sample_BMD.shape[-1] ** 0.5 / mean_norm_M


def open_cache(path: Path, n_rows: int, n_models: int, d_model: int, dtype: str) -> tuple[h5py.File, h5py.Dataset]:
    """Create the HDF5 activation cache [n_rows, M, D] (uncompressed: it is read back in chunks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    file = h5py.File(path, "w")
    chunk = (max(1, min(1024, n_rows)), n_models, d_model)
    return file, file.create_dataset("acts", shape=(n_rows, n_models, d_model), dtype=dtype, chunks=chunk)
