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


def offer(act, doc, pos, count, row, a, d, p):
    """Keep (a, d, p) in latent `row`'s heap if it ranks among the n best so far.

    One function with the sift loops written out (no calls that pass the arrays on), and
    the new example travels as a hole: slots move one step each instead of swapping
    three arrays per level.
    """
    n = act.shape[1]
    i = count[row]
    if i < n:  # not full yet: the hole starts at the end and rises
        count[row] = i + 1
        while i > 0:
            parent = (i - 1) // 2
            if not better(act[row, parent], doc[row, parent], pos[row, parent], a, d, p):
                break
            act[row, i], doc[row, i], pos[row, i] = act[row, parent], doc[row, parent], pos[row, parent]
            i = parent
    elif better(a, d, p, act[row, 0], doc[row, 0], pos[row, 0]):  # evict the worst (root)
        i = 0
        while 2 * i + 1 < n:
            c = 2 * i + 1  # the worse child moves up while the new example ranks above it
            if c + 1 < n and better(act[row, c], doc[row, c], pos[row, c],
                                    act[row, c + 1], doc[row, c + 1], pos[row, c + 1]):
                c += 1
            if not better(a, d, p, act[row, c], doc[row, c], pos[row, c]):
                break
            act[row, i], doc[row, i], pos[row, i] = act[row, c], doc[row, c], pos[row, c]
            i = c
    else:
        return
    act[row, i], doc[row, i], pos[row, i] = a, d, p


def compile_heap(decorate):
    """Compile the heap functions with `decorate` (e.g. numba.njit) so they call each other.

    Args:
        decorate: function decorator, applied lazily-compiling (nothing compiles here).

    Returns:
        dict name -> compiled function for better and offer.
    """
    namespace: dict = {}
    for name in ("better", "offer"):
        source = globals()[name]
        # a copy whose globals are `namespace`, so its calls resolve to compiled siblings
        clone = types.FunctionType(source.__code__, namespace, name)
        namespace[name] = decorate(clone)
    return namespace
