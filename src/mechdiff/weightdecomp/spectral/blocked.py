"""A matrix that is never held whole: products with it run over blocks of its rows.

Why: the delta of a 128k-token embedding is 2 GB in float32, and the sketch only ever
multiplies by it (D @ X, X^T @ D). `RowBlockMatrix` forms one block of rows at a time
from a producer (the diff reads the two checkpoints' rows and subtracts them), so the
sketch holds O(block_rows x n + (m + n) x width) floats instead of m x n. Each product
is one pass over the producer; row blocks of D @ X are computed exactly as the whole
product's rows, and X^T @ D sums the blocks' products (float32 round-off apart, equal).
`randomized_svd` and `analyze_delta` take it wherever they take a tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from mechdiff.kernels.signs import flip_block_

BlockProducer = Callable[[int, int], torch.Tensor]
"""(start, stop) -> float32 CPU tensor [stop - start, n]: rows start..stop of the matrix.
It may return a view of a reused buffer: each block is used before the next is asked for."""

SIGN_WORD = 64  # rows per block are a multiple of this, so a block starts on a whole sign word


class RowBlockMatrix:
    """A float32 [m, n] matrix given by a producer of row blocks (see the module docstring).

    Args:
        shape: (m, n).
        produce: the row-block producer.
        block_rows: rows per block (rounded up to a multiple of 64).
        device: where products run; blocks are moved there one at a time.
    """

    ndim = 2
    dtype = torch.float32

    def __init__(self, shape: tuple[int, int], produce: BlockProducer, block_rows: int,
                 device: torch.device | str = "cpu", flip_seed: int | None = None) -> None:
        self.shape = torch.Size(shape)
        self.device = torch.device(device)
        self.block_rows = max(SIGN_WORD, -(-block_rows // SIGN_WORD) * SIGN_WORD)
        self._produce = produce
        self._flip_seed = flip_seed

    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    def is_floating_point(self) -> bool:
        return True

    def float(self) -> RowBlockMatrix:
        return self

    def to(self, device: torch.device | str) -> RowBlockMatrix:
        return RowBlockMatrix(tuple(self.shape), self._produce, self.block_rows, device, self._flip_seed)

    def new_empty(self, *shape: int) -> torch.Tensor:
        return torch.empty(*shape, dtype=torch.float32, device=self.device)

    @property
    def T(self) -> _Transposed:
        return _Transposed(self)

    def blocks(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(start, stop, block on self.device) over all rows, in order."""
        m, n = self.shape
        for start in range(0, m, self.block_rows):
            stop = min(start + self.block_rows, m)
            block = self._produce(start, stop)
            if block.shape != (stop - start, n):
                raise ValueError(f"row block {start}:{stop} has shape {tuple(block.shape)}, expected "
                                 f"{(stop - start, n)}")
            if self._flip_seed is not None:
                block = flip_block_(block.contiguous(), self._flip_seed, start * n)
            yield start, stop, block.to(self.device)  # synchronous: the producer may reuse its buffer

    def dense(self) -> torch.Tensor:
        """The whole matrix (for matrices small enough that an exact SVD is used)."""
        return torch.cat([block.clone() for _, _, block in self.blocks()])

    def __matmul__(self, X: torch.Tensor) -> torch.Tensor:
        """D @ X for X [n, l] -> [m, l], one row block at a time."""
        out = torch.empty(self.shape[0], X.shape[1], dtype=torch.float32, device=self.device)
        for start, stop, block in self.blocks():
            torch.matmul(block, X, out=out[start:stop])
        return out

    def __rmatmul__(self, X_t: torch.Tensor) -> torch.Tensor:
        """X_t @ D for X_t [l, m] -> [l, n]: the blocks' products summed."""
        out = torch.zeros(X_t.shape[0], self.shape[1], dtype=torch.float32, device=self.device)
        for start, stop, block in self.blocks():
            out.addmm_(X_t[:, start:stop], block)
        return out

    @contextmanager
    def signs_flipped(self, seed: int) -> Iterator[RowBlockMatrix]:
        """This matrix with its entries' signs flipped as `kernels.signs.signs_flipped` flips a whole one."""
        yield RowBlockMatrix(tuple(self.shape), self._produce, self.block_rows, self.device, seed)


class _Transposed:
    """D^T of a RowBlockMatrix, for the products the sketch writes as ``X @ D.T`` and ``D.T @ X``."""

    ndim = 2
    dtype = torch.float32

    def __init__(self, matrix: RowBlockMatrix) -> None:
        self._matrix = matrix
        self.shape = torch.Size((matrix.shape[1], matrix.shape[0]))

    @property
    def T(self) -> RowBlockMatrix:
        return self._matrix

    def __matmul__(self, X: torch.Tensor) -> torch.Tensor:
        return (X.T @ self._matrix).T

    def __rmatmul__(self, X_t: torch.Tensor) -> torch.Tensor:
        return (self._matrix @ X_t.T).T
