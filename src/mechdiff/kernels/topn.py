"""Top-n example tracking: the n largest activations per latent over a whole run.

Stream (latent, activation, doc, position) entries chunk by chunk; each latent keeps a
bounded heap (see `heap`), so memory is O(F * n) and each entry costs one comparison
unless it enters. States merge exactly across chunks and ranks because ties are broken
by (doc, pos). NaN and -inf activations are ignored (-inf marks empty slots).
The CPU loop is numba code run by the calling thread and helper threads (`_workshare`)
rather than a `parallel=True` loop, whose per-call wake-up cost ~10% of an update here.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
import torch
from numba import njit

from mechdiff.kernels._intrinsics import fetch_add, prefetch
from mechdiff.kernels._workshare import (
    FIRST_FREE_SLOT,
    join,
    leave,
    new_control,
    run_shared,
    wait_for,
)
from mechdiff.kernels.heap import compile_heap
from mechdiff.kernels.resolver import resolve

# The heap is inlined into loops compiled without numba's runtime (_nrt=False: they
# allocate nothing). A call that passes arrays on otherwise pays atomic reference counting
# of each (~65 ns a call here, more than the heap work itself), and the same counting
# runs inside a loop compiled with the runtime when the heap is inlined there.
_offer = compile_heap(lambda f: njit(f, inline="always", _nrt=False))["offer"]
# entries per kernel call: bounds the candidate scratch (int32 indices, 2 x 16 MB)
_SLICE_ENTRIES = 1 << 22
# latent ranges (and entry shares) per thread, handed out one at a time: on 2 threads
# 2 took 24.0 ms per 8-chunk benchmark stream, 1 took 26.7 and 4 took 29.8
_PARTS_PER_THREAD = 2
# int64 slots past each share's row of part bounds: a cache line between threads' rows
_ROW_PAD = 8
# candidates ahead whose activation rows `_insert` prefetches: 4..32 measured alike,
# none ~15% slower; prefetching the doc and pos rows too was slower (more lines in flight)
_PREFETCH_AHEAD = 8
_scratch = threading.local()


class TopN:
    """The n best (activation, doc, pos) examples of each of F latents.

    Args:
        n_latents: number of latents F.
        n: examples kept per latent.
        device: where the state lives and the update kernel runs ("cpu", "cuda", ...).
    """

    def __init__(self, n_latents: int, n: int, *, device: str = "cpu") -> None:
        if n_latents < 0 or n < 1:
            raise ValueError(f"need n_latents >= 0 and n >= 1, got {n_latents}, {n}")
        self.n_latents, self.n, self.device = n_latents, n, str(device)
        # filled by numpy: torch's fill wakes its thread pool, slow on a busy small machine
        self.act = torch.from_numpy(_line_aligned_full((n_latents, n), -np.inf, np.float32)).to(device)
        self.doc = torch.from_numpy(_line_aligned_full((n_latents, n), -1, np.int64)).to(device)
        self.pos = torch.from_numpy(_line_aligned_full((n_latents, n), -1, np.int64)).to(device)
        self.count = torch.from_numpy(np.zeros(n_latents, np.int64)).to(device)
        # chosen once: backends keep rows in different orders (heap vs sorted)
        self._update = resolve("topn_update", self.device)

    def update(self, latent, act, doc, pos) -> None:
        """Offer entries; each latent keeps its n best.

        Args:
            latent: int[M] latent ids in [0, F) (numpy array or tensor).
            act: float[M] activations.
            doc: int[M] document ids.
            pos: int[M] token positions.
        """
        latent, act, doc, pos = (_as_tensor(x, dtype, self.device) for x, dtype in (
            (latent, torch.int64), (act, torch.float32), (doc, torch.int64), (pos, torch.int64)))
        if not latent.shape == act.shape == doc.shape == pos.shape or latent.ndim != 1:
            raise ValueError("latent, act, doc and pos must be 1-D of equal length")
        if not latent.numel():
            return
        # numpy on the host: a torch reduction here cost more than the whole update when
        # torch's thread pool competed with numba's on a busy 2-core machine
        ids = latent.numpy() if latent.device.type == "cpu" else latent
        if int(ids.min()) < 0 or int(ids.max()) >= self.n_latents:
            raise ValueError(f"latent ids must lie in [0, {self.n_latents})")
        # backends skip NaN and -inf activations themselves
        self._update(self.act, self.doc, self.pos, self.count, latent, act, doc, pos)

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(act float32[F, n], doc int64[F, n], pos int64[F, n]), best first per latent.

        Empty slots hold act -inf and doc = pos = -1.
        """
        act, doc, pos = (t.cpu().numpy() for t in (self.act, self.doc, self.pos))
        rows = np.repeat(np.arange(self.n_latents), self.n)
        order = np.lexsort((pos.ravel(), doc.ravel(), -act.ravel(), rows))
        return tuple(x.ravel()[order].reshape(self.n_latents, self.n) for x in (act, doc, pos))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays that `from_state` turns back into an equal TopN (e.g. to gather ranks)."""
        act, doc, pos = self.result()
        return {"act": act, "doc": doc, "pos": pos}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], *, device: str = "cpu") -> TopN:
        """Rebuild a TopN from `state_dict()` output.

        Args:
            state: dict with act, doc, pos arrays of shape [F, n].
            device: where the new state lives.

        Returns:
            TopN holding the same examples.
        """
        act = np.asarray(state["act"], np.float32)
        out = cls(act.shape[0], act.shape[1], device=device)
        out._offer_examples(act, np.asarray(state["doc"]), np.asarray(state["pos"]))
        return out

    def merge(self, other: TopN) -> TopN:
        """A new TopN holding the n best of both; neither input changes.

        Args:
            other: a TopN with the same n_latents and n.

        Returns:
            The merged TopN on self's device.
        """
        if (other.n_latents, other.n) != (self.n_latents, self.n):
            raise ValueError("can only merge TopN with equal n_latents and n")
        out = TopN(self.n_latents, self.n, device=self.device)
        for part in (self, other):
            out._offer_examples(*(t.cpu().numpy() for t in (part.act, part.doc, part.pos)))
        return out

    def _offer_examples(self, act: np.ndarray, doc: np.ndarray, pos: np.ndarray) -> None:
        rows = np.repeat(np.arange(act.shape[0]), act.shape[1])
        self.update(rows, act.ravel(), doc.ravel(), pos.ravel())


def _line_aligned_full(shape: tuple[int, int], value, dtype) -> np.ndarray:
    """np.full whose data starts on a 64-byte cache line (numpy's large arrays start 16
    bytes past a page), so a row of 16 int64 spans two lines, not three."""
    nbytes = shape[0] * shape[1] * np.dtype(dtype).itemsize
    buf = np.empty(nbytes + 64, np.uint8)
    start = -buf.ctypes.data % 64
    out = buf[start:start + nbytes].view(dtype).reshape(shape)
    out.fill(value)
    return out


def _as_tensor(x, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Contiguous tensor of `dtype` on `device`; numpy input of that dtype is not copied."""
    t = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
    return t.detach().to(device, dtype).contiguous()


def topn_update_reference(state_act, state_doc, state_pos, state_count, latent, act, doc,
                          pos) -> None:
    """Torch reference: sort kept and new entries together, keep n per latent (rows sorted)."""
    n_latents, n = state_act.shape
    valid = act > -torch.inf  # also False for NaN
    latent, act, doc, pos = latent[valid], act[valid], doc[valid], pos[valid]
    filled = state_act.reshape(-1) != -torch.inf
    rows = torch.arange(n_latents, device=state_act.device).repeat_interleave(n)[filled]
    all_lat = torch.cat([rows, latent])
    all_act = torch.cat([state_act.reshape(-1)[filled], act])
    all_doc = torch.cat([state_doc.reshape(-1)[filled], doc])
    all_pos = torch.cat([state_pos.reshape(-1)[filled], pos])
    order = torch.arange(all_lat.numel(), device=all_lat.device)
    for key in (all_pos, all_doc, -all_act, all_lat):  # least significant key first
        order = order[torch.sort(key[order], stable=True).indices]
    lat_sorted = all_lat[order]
    counts = torch.bincount(lat_sorted, minlength=n_latents)
    rank = torch.arange(order.numel(), device=order.device) - (
        torch.cumsum(counts, 0) - counts).repeat_interleave(counts)
    keep = rank < n
    slot = lat_sorted[keep] * n + rank[keep]
    state_act.fill_(-torch.inf)
    state_doc.fill_(-1)
    state_pos.fill_(-1)
    state_act.view(-1)[slot] = all_act[order[keep]]
    state_doc.view(-1)[slot] = all_doc[order[keep]]
    state_pos.view(-1)[slot] = all_pos[order[keep]]
    state_count.copy_(counts.clamp(max=n))


def topn_update_numba(state_act, state_doc, state_pos, state_count, latent, act, doc,
                      pos) -> None:
    """numba CPU loop: threads filter shares of the entries, then insert by latent range."""
    host = [t.cpu().numpy() for t in (state_act, state_doc, state_pos, state_count)]
    entries = [t.cpu().numpy() for t in (latent, act, doc, pos)]
    n_threads = numba.get_num_threads()
    n_parts = n_threads * _PARTS_PER_THREAD
    scratch = _scratch_buffers(n_parts, min(_SLICE_ENTRIES, entries[0].size))
    for s in range(0, entries[0].size, _SLICE_ENTRIES):
        bar, part_of = _bars(host[0], host[3], n_parts)
        run_shared(_update_work, (*host, bar, part_of, *(e[s:s + _SLICE_ENTRIES] for e in entries),
                                  *scratch, new_control(3)), n_threads)
    for target, source in zip((state_act, state_doc, state_pos, state_count), host, strict=True):
        if target.device.type != "cpu":
            target.copy_(torch.from_numpy(source))


def _scratch_buffers(n_parts: int, m: int) -> tuple[np.ndarray, ...]:
    """Per-thread reusable buffers of `_update_work`.

    candidates and dealt: int32[>= m] entry indices; bounds: int64[share, part + 2] where
    each part's candidates lie in a share (rows padded by a cache line, so threads never
    write to one line).
    Kept between calls: a fresh buffer of this size is a fresh mapping, and its page
    faults cost ~10% of an update of a 262144-entry chunk.
    """
    held = getattr(_scratch, "buffers", None)
    if held is None or held[2].shape[0] != n_parts or held[0].size < m:
        _scratch.buffers = (np.empty(m, np.int32), np.empty(m, np.int32),
                            np.zeros((n_parts, n_parts + 2 + _ROW_PAD), np.int64))
    return _scratch.buffers


@njit(cache=True)
def _bars(s_act, s_count, n_parts):  # pragma: no cover (numba)
    """(bar float32[F], part_of int32[F]): each latent's entry bar (its worst kept
    activation once its row is full, else -inf) and the part that owns its row.

    The bars sit in one small array: rejecting an entry touches one cache line per 16
    latents instead of one per latent."""
    n_latents, n = s_act.shape
    bar = np.full(n_latents, -np.inf, np.float32)
    part_of = np.empty(n_latents, np.int32)
    for j in range(n_latents):
        if s_count[j] == n:
            bar[j] = s_act[j, 0]
        part_of[j] = j * n_parts // n_latents
    return bar, part_of


# the job's counters in its control array (see _workshare), one cache line apart
_SHARE_TICKET, _SHARES_DONE, _PART_TICKET = FIRST_FREE_SLOT, FIRST_FREE_SLOT + 8, FIRST_FREE_SLOT + 16


@njit(nogil=True, _nrt=False, cache=True)
def _update_work(s_act, s_doc, s_pos, s_count, bar, part_of, latent, act, doc, pos, candidates,
                 dealt, bounds, ctrl):  # pragma: no cover (numba)
    # One thread's part of a job: P shares of the entries, then P ranges of latents
    # ("parts"), each handed to whichever thread asks next (so a thread that is slow or
    # joins late simply takes fewer). A share's entries are filtered against their latent's bar
    # (most fail once the rows are full) and the survivors are partitioned by part; each
    # part then inserts its candidates from every share, touching only its own rows.
    # Measured and dropped: a full counting sort of the candidates by latent (cost more
    # than its locality saved), sorted rows instead of heaps (alike; appends into sorted
    # rows made filling them slower), a branch-free choice of the worse child on every
    # tie-break field (slower: more loads).
    if not join(ctrl):
        return
    n_parts = bounds.shape[0]
    m = latent.size
    share = fetch_add(ctrl, _SHARE_TICKET, 1)
    while share < n_parts:
        _filter_share(bar, part_of, latent, act, share * m // n_parts,
                      (share + 1) * m // n_parts, candidates, dealt, bounds[share])
        fetch_add(ctrl, _SHARES_DONE, 1)
        share = fetch_add(ctrl, _SHARE_TICKET, 1)
    wait_for(ctrl, _SHARES_DONE, n_parts)  # every share dealt before any insert
    part = fetch_add(ctrl, _PART_TICKET, 1)
    while part < n_parts:
        for share in range(n_parts):
            start = share * m // n_parts
            _insert(s_act, s_doc, s_pos, s_count, bar,
                    dealt[start + bounds[share, part]:start + bounds[share, part + 1]],
                    latent, act, doc, pos)
        part = fetch_add(ctrl, _PART_TICKET, 1)
    leave(ctrl)


@njit(_nrt=False, cache=True)
def _filter_share(bar, part_of, latent, act, start, stop, candidates, dealt,
                  bounds):  # pragma: no cover (numba)
    """Entries start..stop that reach their latent's bar, partitioned by part.

    Part p's candidates end up in dealt[start + bounds[p]:start + bounds[p + 1]]. The
    filter is branch-free: each index is stored and the count advances only if the entry
    passes (whether it does is a coin flip early in a run).
    """
    k = start
    for i in range(start, stop):
        a = act[i]
        candidates[k] = i
        # `>=` is False for NaN; -inf never enters (it marks empty slots)
        k += np.int64((a >= bar[latent[i]]) & (a != -np.inf))
    n_parts = bounds.size - 2 - _ROW_PAD
    bounds[:n_parts + 2] = 0
    for q in range(start, k):
        bounds[part_of[latent[candidates[q]]] + 2] += 1
    for p in range(n_parts):
        bounds[p + 2] += bounds[p + 1]
    for q in range(start, k):  # bounds[p + 1] walks from the start to the end of part p
        i = candidates[q]
        p = part_of[latent[i]] + 1
        dealt[start + bounds[p]] = i
        bounds[p] += 1


@njit(_nrt=False, cache=True)
def _insert(s_act, s_doc, s_pos, s_count, bar, candidates, latent, act, doc,
            pos):  # pragma: no cover (numba)
    """Offer the candidate entries to their heaps, raising each bar as its row fills."""
    n = s_act.shape[1]
    m = candidates.size
    for k in range(m):
        if k + _PREFETCH_AHEAD < m:  # the activation row of a candidate a few ahead
            ahead = candidates[k + _PREFETCH_AHEAD]
            prefetch(s_act, latent[ahead] * n)
            prefetch(doc, ahead)
            prefetch(pos, ahead)
        i = candidates[k]
        j = latent[i]
        if act[i] >= bar[j]:  # the bar may have risen since the filter
            _offer(s_act, s_doc, s_pos, s_count, j, act[i], doc[i], pos[i])
            if s_count[j] == n:
                bar[j] = s_act[j, 0]
