"""Bounded per-latent min-heaps of (activation, doc, pos), as plain Python functions.

`topn` compiles these with numba.njit and `cuda_kernels` with numba.cuda.jit(device=True),
so the CPU loop and the GPU kernel share one heap. Row j of act/doc/pos [F, n] holds
latent j's kept examples; once the row is full it is a heap with the worst at index 0
(before, its count[j] examples sit unordered at the front). "Better" is a total order, larger
activation first, then smaller doc, then smaller pos, so the kept set never depends on
the order in which examples arrive (chunks and ranks merge exactly).
numba's on-disk cache of a caller (topn's kernels) is keyed on the caller's file only:
after editing this file, touch topn.py (or clear __pycache__) in a dev checkout.
"""

from __future__ import annotations

import types

import numpy as np


def better(a1, d1, p1, a2, d2, p2):
    """True when example 1 ranks above example 2."""
    if a1 != a2:
        return a1 > a2
    if d1 != d2:
        return d1 < d2
    return p1 < p2


def sift_down(act, doc, pos, row, i, a, d, p):
    """Place (a, d, p) at slot i of a full heap row whose subtrees below i are heaps.

    The new example travels as a hole: the worse child moves up one step per level
    instead of three arrays being swapped.
    """
    n = act.shape[1]
    while 2 * i + 1 < n:
        c = 2 * i + 1  # the worse child moves up while the new example ranks above it
        if c + 1 < n:
            left, right = act[row, c], act[row, c + 1]
            if left != right:  # an add, not a branch that mispredicts half the time
                c += np.int64(left > right)
            elif better(left, doc[row, c], pos[row, c], right, doc[row, c + 1], pos[row, c + 1]):
                c += 1
        if not better(a, d, p, act[row, c], doc[row, c], pos[row, c]):
            break
        act[row, i], doc[row, i], pos[row, i] = act[row, c], doc[row, c], pos[row, c]
        i = c
    act[row, i], doc[row, i], pos[row, i] = a, d, p


def offer(act, doc, pos, count, row, a, d, p):
    """Keep (a, d, p) in latent `row`'s heap if it ranks among the n best so far.

    A row that is not full is an unordered list: new examples are appended, and the row
    is heapified once, when it fills (appends are plain stores, whose cache misses
    overlap; sifting up on every append made each wait for its row).
    """
    n = act.shape[1]
    i = count[row]
    if i < n:
        act[row, i], doc[row, i], pos[row, i] = a, d, p
        count[row] = i + 1
        if i + 1 == n:  # full: heapify bottom-up (Floyd)
            for k in range(n // 2 - 1, -1, -1):
                sift_down(act, doc, pos, row, k, act[row, k], doc[row, k], pos[row, k])
    elif better(a, d, p, act[row, 0], doc[row, 0], pos[row, 0]):  # evict the worst (root)
        sift_down(act, doc, pos, row, 0, a, d, p)


def compile_heap(decorate):
    """Compile the heap functions with `decorate` (e.g. numba.njit) so they call each other.

    Args:
        decorate: function decorator, applied lazily-compiling (nothing compiles here).

    Returns:
        dict name -> compiled function for better, sift_down and offer.
    """
    namespace: dict = {"np": np}
    for name in ("better", "sift_down", "offer"):
        source = globals()[name]
        # a copy whose globals are `namespace`, so its calls resolve to compiled siblings
        clone = types.FunctionType(source.__code__, namespace, name)
        namespace[name] = decorate(clone)
    return namespace
