"""Bounded per-latent min-heaps of (activation, doc, pos), as plain Python functions.

`topn` compiles these with numba.njit and `cuda_kernels` with numba.cuda.jit(device=True),
so the CPU loop and the GPU kernel share one heap. Row j of act/doc/pos [F, n] holds
latent j's kept examples with the worst at index 0. "Better" is a total order, larger
activation first, then smaller doc, then smaller pos, so the kept set never depends on
the order in which examples arrive (chunks and ranks merge exactly).
numba's on-disk cache of a caller (topn._update_kernel) is keyed on the caller's file
only: after editing this file, touch topn.py (or clear __pycache__) in a dev checkout.
"""

from __future__ import annotations

import types


def better(a1, d1, p1, a2, d2, p2):
    """True when example 1 ranks above example 2."""
    if a1 != a2:
        return a1 > a2
    if d1 != d2:
        return d1 < d2
    return p1 < p2


def swap(act, doc, pos, row, i, k):
    """Exchange slots i and k of one row."""
    act[row, i], act[row, k] = act[row, k], act[row, i]
    doc[row, i], doc[row, k] = doc[row, k], doc[row, i]
    pos[row, i], pos[row, k] = pos[row, k], pos[row, i]


def sift_up(act, doc, pos, row, i):
    """Move slot i towards the root while it ranks below its parent."""
    while i > 0:
        parent = (i - 1) // 2
        if not better(act[row, parent], doc[row, parent], pos[row, parent],
                      act[row, i], doc[row, i], pos[row, i]):
            return
        swap(act, doc, pos, row, i, parent)
        i = parent


def sift_down(act, doc, pos, row, size):
    """Move the root down until both children rank above it."""
    i = 0
    while True:
        worst = i
        left, right = 2 * i + 1, 2 * i + 2
        if left < size and better(act[row, worst], doc[row, worst], pos[row, worst],
                                  act[row, left], doc[row, left], pos[row, left]):
            worst = left
        if right < size and better(act[row, worst], doc[row, worst], pos[row, worst],
                                   act[row, right], doc[row, right], pos[row, right]):
            worst = right
        if worst == i:
            return
        swap(act, doc, pos, row, i, worst)
        i = worst


def offer(act, doc, pos, count, row, a, d, p):
    """Keep (a, d, p) in latent `row`'s heap if it ranks among the n best so far."""
    n = act.shape[1]
    size = count[row]
    if size < n:
        act[row, size] = a
        doc[row, size] = d
        pos[row, size] = p
        count[row] = size + 1
        sift_up(act, doc, pos, row, size)
    elif better(a, d, p, act[row, 0], doc[row, 0], pos[row, 0]):
        act[row, 0] = a
        doc[row, 0] = d
        pos[row, 0] = p
        sift_down(act, doc, pos, row, n)


def compile_heap(decorate):
    """Compile the heap functions with `decorate` (e.g. numba.njit) so they call each other.

    Args:
        decorate: function decorator, applied lazily-compiling (nothing compiles here).

    Returns:
        dict name -> compiled function for better, swap, sift_up, sift_down, offer.
    """
    namespace: dict = {}
    for name in ("better", "swap", "sift_up", "sift_down", "offer"):
        source = globals()[name]
        # a copy whose globals are `namespace`, so its calls resolve to compiled siblings
        clone = types.FunctionType(source.__code__, namespace, name)
        namespace[name] = decorate(clone)
    return namespace
