"""Random entry signs for the sign-flip noise test, from a counter-based hash.

Element i of a matrix (row-major) gets its sign from bit i % 64 of splitmix64(key +
i // 64), key = splitmix64(seed): any block of rows, on any device, flips the same
entries, and no generator state is carried from one block to the next. The numba loop
forms D * R in one pass; drawing the signs with numpy and multiplying took 10x as long
(50 ms for a 5632 x 2048 delta) and was most of the sign-flip test's cost.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from numba import njit, prange

from mechdiff.kernels.resolver import prefer_workqueue_threads

_WORD = 64
_BLOCK_ELEMENTS = 1 << 20  # per host block of signs for tensors off the CPU
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@contextmanager
def signs_flipped(D: torch.Tensor, seed: int) -> Iterator[torch.Tensor]:
    """D with each entry's sign flipped at random, for the duration of a `with` block.

    A contiguous float32 D is flipped in place and flipped back on exit (R * R = 1, and
    a product with +-1.0 is exact, so D comes back bit for bit): no copy of D, whose
    allocation cost as much as the flip itself. Any other D yields a flipped copy.

    Args:
        D: matrix (any shape) on any device.
        seed: which signs; the same seed flips the same entries everywhere.

    Yields:
        D * R with R_i = +-1 from the hash above (D itself, or a float32 copy).
    """
    if not (D.dtype == torch.float32 and D.is_contiguous()):
        yield flip_signs(D, seed)
        return
    _flip_(D, seed)
    try:
        yield D
    finally:
        _flip_(D, seed)


def flip_signs(D: torch.Tensor, seed: int) -> torch.Tensor:
    """A float32 copy of D with each entry's sign flipped at random (see `signs_flipped`)."""
    out = D.detach().to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    _flip_(out, seed)
    return out


def _flip_(D: torch.Tensor, seed: int) -> None:
    """Flip the signs of contiguous float32 D in place."""
    key, flat = _key(seed), D.detach().view(-1)
    if flat.device.type == "cpu":
        prefer_workqueue_threads()
        array = flat.numpy()
        _flip_kernel(array, array, key, np.uint64(0))
        return
    ones = np.ones(min(_BLOCK_ELEMENTS, flat.numel()), np.float32)
    signs = np.empty_like(ones)
    for start in range(0, flat.numel(), _BLOCK_ELEMENTS):  # starts are whole words
        stop = min(start + _BLOCK_ELEMENTS, flat.numel())
        _flip_kernel(ones[:stop - start], signs[:stop - start], key, np.uint64(start))
        flat[start:stop].mul_(torch.from_numpy(signs[:stop - start]).to(flat.device))


def flip_block_(block: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    """Flip, in place, the signs of a block of a larger matrix whose first element is element
    `offset` (row-major) of that matrix, exactly as `signs_flipped` flips the whole one.

    Args:
        block: contiguous float32 CPU tensor (a block of whole rows).
        seed: which signs.
        offset: flat index of block[0] in the whole matrix, a multiple of 64.

    Returns:
        block.
    """
    if offset % _WORD or block.dtype != torch.float32 or not block.is_contiguous() or block.device.type != "cpu":
        raise ValueError("flip_block_ needs a contiguous float32 CPU block starting on a multiple of 64")
    prefer_workqueue_threads()
    array = block.detach().view(-1).numpy()
    _flip_kernel(array, array, _key(seed), np.uint64(offset))
    return block


def flip_signs_reference(D: torch.Tensor, seed: int) -> torch.Tensor:
    """Element-by-element version of `flip_signs` (same signs), for tests."""
    src = D.detach().float().contiguous().cpu().view(-1).numpy()
    key = _key(seed)
    bits = [_mix(key + np.uint64(w)) for w in range((src.size + _WORD - 1) // _WORD)]
    out = np.array([-x if (int(bits[i // _WORD]) >> (i % _WORD)) & 1 else x for i, x in enumerate(src)],
                   dtype=np.float32)
    return torch.from_numpy(out).view(D.shape).to(D.device)


def _key(seed: int) -> np.uint64:
    # np.uint64, not the int numba returns: an int below 2**63 would reach the kernel as
    # int64, and numba turns int64 + uint64 into a float
    return np.uint64(_mix(np.uint64(seed % (1 << 64))))


@njit(cache=True)
def _mix(x):  # pragma: no cover (numba)
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@njit(parallel=True, cache=True)
def _flip_kernel(src, out, key, offset):  # pragma: no cover (numba)
    # offset: index of src[0] in the whole matrix, a multiple of 64. Times +-1.0 rather
    # than a branch, and unsigned indices (no wraparound test): LLVM vectorizes the
    # inner loop, and the product is exact (NaN, Inf and -0.0 included).
    n = np.uint64(src.size)
    n_words = (n + np.uint64(_WORD - 1)) // np.uint64(_WORD)
    first_word = offset // np.uint64(_WORD)
    for w in prange(n_words):
        bits = _mix(key + first_word + np.uint64(w))
        start = np.uint64(w) * np.uint64(_WORD)
        for k in range(min(np.uint64(_WORD), n - start)):
            i = start + np.uint64(k)
            bit = (bits >> np.uint64(k)) & np.uint64(1)
            out[i] = src[i] * (np.float32(1.0) - np.float32(2.0) * np.float32(bit))
