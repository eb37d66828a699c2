"""_workshare: every work item done exactly once, late helpers shut out, fork-safe pool."""

import multiprocessing

import numpy as np
import pytest
from numba import njit

from mechdiff.kernels._intrinsics import fetch_add
from mechdiff.kernels._workshare import (
    FINISHED,
    FIRST_FREE_SLOT,
    JOINED,
    join,
    leave,
    new_control,
    run_shared,
    wait_for,
)

_TICKET, _DONE, _TICKET2 = FIRST_FREE_SLOT, FIRST_FREE_SLOT + 8, FIRST_FREE_SLOT + 16


@njit(nogil=True)
def _square_items(done_by, out, ctrl):
    # a two-phase job like topn's: squares, then (after a barrier on the first phase)
    # each item adds its right neighbour's square, which another thread may have written
    if not join(ctrl):
        return
    n = out.size
    i = fetch_add(ctrl, _TICKET, 1)
    while i < n:
        out[i] = i * i
        done_by[i] += 1
        fetch_add(ctrl, _DONE, 1)
        i = fetch_add(ctrl, _TICKET, 1)
    wait_for(ctrl, _DONE, n)
    i = fetch_add(ctrl, _TICKET2, 1)
    while i < n:
        done_by[n + i] = out[(i + 1) % n]
        i = fetch_add(ctrl, _TICKET2, 1)
    leave(ctrl)


def _run(n_items: int, n_threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    out = np.zeros(n_items, np.int64)
    done_by = np.zeros(2 * n_items, np.int64)
    ctrl = new_control(3)
    took_part = run_shared(_square_items, (done_by, out, ctrl), n_threads)
    return out, done_by, ctrl, took_part


@pytest.mark.parametrize("n_threads", [1, 2, 4])
@pytest.mark.parametrize("n_items", [0, 1, 7, 5000])
def test_each_item_is_done_once_and_phases_are_ordered(n_items, n_threads):
    out, done_by, ctrl, took_part = _run(n_items, n_threads)
    items = np.arange(n_items)
    np.testing.assert_array_equal(out, items * items)
    assert (done_by[:n_items] == 1).all()  # each item handed out once
    # the second phase read squares written in the first, by whichever thread
    np.testing.assert_array_equal(done_by[n_items:], np.roll(items * items, -1))
    # JOINED may still grow after the job (a helper waking late adds 1, then leaves): not read here
    assert 1 <= took_part <= n_threads and ctrl[FINISHED] == took_part


def test_a_helper_that_wakes_after_the_job_touches_nothing():
    out, done_by, ctrl, _ = _run(50, 2)
    before = (out.copy(), done_by.copy(), ctrl.copy())
    _square_items(done_by, out, ctrl)  # what a late helper runs
    np.testing.assert_array_equal(out, before[0])
    np.testing.assert_array_equal(done_by, before[1])
    assert ctrl[FINISHED] == before[2][FINISHED]


def _child(queue) -> None:
    out, _, _, _ = _run(300, 2)
    queue.put(bool((out == np.arange(300) ** 2).all()))


def test_helpers_work_in_a_forked_child():
    _run(10, 2)  # the parent's pool exists before the fork
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue,))
    child.start()
    child.join(60)
    assert child.exitcode == 0 and queue.get(timeout=5) is True


def test_a_pool_that_refuses_work_leaves_it_to_the_caller(monkeypatch):
    from mechdiff.kernels import _workshare

    class ShutDown:
        def submit(self, *args):
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    monkeypatch.setattr(_workshare, "_helpers", lambda n: ShutDown())
    out, _, ctrl, took_part = _run(40, 2)
    np.testing.assert_array_equal(out, np.arange(40) ** 2)
    assert took_part == 1 and ctrl[FINISHED] == 1


class _LateHelpers:
    """A pool whose helpers all wake after the job is closed (what a loaded machine does now and then)."""

    def __init__(self):
        self.pending = []

    def submit(self, fn, *args):
        self.pending.append((fn, args))

    def wake(self) -> None:
        for fn, args in self.pending:
            fn(*args)


def test_late_helpers_change_neither_the_result_nor_the_count_of_threads_that_worked(monkeypatch):
    from mechdiff.kernels import _workshare

    late = _LateHelpers()
    monkeypatch.setattr(_workshare, "_helpers", lambda n: late)
    out, done_by, ctrl, took_part = _run(7, 3)
    late.wake()  # both helpers arrive after close: they bump JOINED, see CLOSED, return
    np.testing.assert_array_equal(out, np.arange(7) ** 2)
    assert (done_by[:7] == 1).all()
    assert took_part == 1 and ctrl[FINISHED] == 1
    assert ctrl[JOINED] % (1 << 40) == 3  # why JOINED is no count of the threads that worked
