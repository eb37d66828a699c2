"""One numba job run by the calling thread and helper threads that join when they wake.

numba's parallel loops wait for their sleeping workers to wake on every call (~0.15 ms
per call on this 2-core VM, ~10% of a top-n update of a 262144-entry chunk). Here the
calling thread starts on the job at once; helper threads (plain Python threads calling
the same `nogil` numba function) join it whenever they wake and take work items from
the job's counters. When the caller is done it closes the job: a helper that wakes
later returns without touching anything, and the caller waits only for helpers that
joined.

A job is a numba function `work(*args, ctrl)` whose last argument is a control array
from `new_control()`. It starts with `if not join(ctrl): return` and ends with
`leave(ctrl)`; its own counters use slots FIRST_FREE_SLOT, FIRST_FREE_SLOT + 8, ...
(one cache line apart) and are read and advanced with `fetch_add`, a full barrier;
`wait_for(ctrl, slot, n)` holds a thread until a counter reaches n (a phase barrier).

After the job, JOINED keeps counting: a helper that wakes late still adds 1 to it before
it sees CLOSED and leaves. So JOINED is no record of who worked; the number of threads
that took part is what `close` (and `run_shared`) return, and FINISHED equals it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

from mechdiff.kernels._intrinsics import fetch_add

JOINED, FINISHED = 0, 8
FIRST_FREE_SLOT = 16
CLOSED = 1 << 40  # added to JOINED when the job is over: later joiners read >= CLOSED

_pool: tuple[int, int, ThreadPoolExecutor] | None = None


def new_control(n_counters: int) -> np.ndarray:
    """A zeroed control array with room for `n_counters` job counters (one per cache line).

    Make a fresh one per job: a helper that wakes after its job then finds it closed.
    """
    return np.zeros(FIRST_FREE_SLOT + 8 * n_counters, np.int64)


def run_shared(work, args: tuple, n_threads: int) -> int:
    """Run `work(*args)` on this thread and on up to `n_threads - 1` helper threads.

    Args:
        work: numba function compiled with nogil=True, following the protocol above.
        args: its arguments, the control array last.
        n_threads: threads that may work on the job, this one included.

    Returns:
        How many threads took part (1..n_threads); late helpers are not counted.
    """
    pool = _helpers(n_threads - 1)
    try:
        for _ in range(n_threads - 1):
            pool.submit(work, *args)
    except RuntimeError:  # the interpreter is shutting down: this thread does it all
        pass
    work(*args)
    return int(close(args[-1]))


@njit(inline="always", _nrt=False)
def join(ctrl) -> bool:  # pragma: no cover (numba)
    """Enter the job; False when it is already closed (then touch nothing and return)."""
    return fetch_add(ctrl, JOINED, 1) < CLOSED


@njit(inline="always", _nrt=False)
def leave(ctrl) -> None:  # pragma: no cover (numba)
    """Mark this thread's part of the job done (after its last write)."""
    fetch_add(ctrl, FINISHED, 1)


@njit(inline="always", _nrt=False)
def wait_for(ctrl, slot, target) -> None:  # pragma: no cover (numba)
    """Spin until counter `slot` reaches `target` (the reads are atomic: nothing is hoisted)."""
    while fetch_add(ctrl, slot, 0) < target:
        pass


@njit(nogil=True, _nrt=False, cache=True)
def close(ctrl) -> int:  # pragma: no cover (numba)
    """Shut later helpers out of the job, wait for those that joined it to leave; returns their number."""
    admitted = fetch_add(ctrl, JOINED, CLOSED)  # joiners before this add; any later one reads >= CLOSED
    wait_for(ctrl, FINISHED, admitted)
    return admitted


def _helpers(n: int) -> ThreadPoolExecutor | None:
    """The process's helper threads, at least `n` (re-created after a fork, which keeps no threads)."""
    global _pool
    if n <= 0:
        return None
    if _pool is None or _pool[0] != os.getpid() or _pool[1] < n:
        if _pool is not None and _pool[0] == os.getpid():
            _pool[2].shutdown(wait=False)
        _pool = (os.getpid(), n, ThreadPoolExecutor(n, thread_name_prefix="mechdiff-kernels"))
    return _pool[2]
