"""Top-n example tracking: the n largest activations per latent over a whole run.

Stream (latent, activation, doc, position) entries chunk by chunk; each latent keeps a
bounded heap (see `heap`), so memory is O(F * n) and each entry costs one comparison
unless it enters. States merge exactly across chunks and ranks because ties are broken
by (doc, pos). NaN and -inf activations are ignored (-inf marks empty slots).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange

from mechdiff.kernels.heap import compile_heap
from mechdiff.kernels.resolver import resolve

# _nrt=False: the heap allocates nothing, and without numba's runtime each call skips the
# atomic reference counting of its four array arguments (~65 ns a call here, more than
# the heap work itself)
_offer = compile_heap(lambda f: njit(f, _nrt=False))["offer"]


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
        self.act = torch.from_numpy(np.full((n_latents, n), -np.inf, np.float32)).to(device)
        self.doc = torch.from_numpy(np.full((n_latents, n), -1, np.int64)).to(device)
        self.pos = torch.from_numpy(np.full((n_latents, n), -1, np.int64)).to(device)
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
    """numba CPU loop: each thread scans all entries and serves the latents it owns."""
    host = [t.cpu() for t in (state_act, state_doc, state_pos, state_count)]
    entries = [t.cpu().numpy() for t in (latent, act, doc, pos)]
    _update_kernel(*(t.numpy() for t in host), *entries, numba.get_num_threads())
    for target, source in zip((state_act, state_doc, state_pos, state_count), host, strict=True):
        if target.device.type != "cpu":
            target.copy_(source)


@njit(parallel=True, cache=True)
def _update_kernel(s_act, s_doc, s_pos, s_count, latent, act, doc, pos,
                   n_parts):  # pragma: no cover (numba)
    # Two parallel passes. First each part filters a contiguous share of the entries
    # against its latent's entry bar (most entries fail once the rows are full). Then
    # each part serves a contiguous range of latents, reading only the candidates.
    # Splitting by latent from the start made every thread read every entry and
    # mispredict a range test for half of them (2 threads: 3x the time of 1 on a scan).
    # Grouping candidates by latent before inserting (for cache locality) cost more
    # than it saved, and so did software prefetching of the rows.
    n_latents, n = s_act.shape
    # entry bar per latent in one small array: rejecting an entry then touches one
    # cache line per 16 latents instead of one per latent
    bar = np.full(n_latents, -np.inf, np.float32)
    for j in range(n_latents):
        if s_count[j] == n:
            bar[j] = s_act[j, 0]
    m = latent.size
    candidates = np.empty(m, np.int64)
    found = np.zeros(n_parts, np.int64)
    for part in prange(n_parts):
        k = start = part * m // n_parts
        for i in range(start, (part + 1) * m // n_parts):
            # `>=` is False for NaN; -inf never enters (it marks empty slots)
            if act[i] >= bar[latent[i]] and act[i] != -np.inf:
                candidates[k] = i
                k += 1
        found[part] = k - start
    for part in prange(n_parts):
        lo, hi = part * n_latents // n_parts, (part + 1) * n_latents // n_parts
        for share in range(n_parts):
            start = share * m // n_parts
            for k in range(start, start + found[share]):
                i = candidates[k]
                j = latent[i]
                if j < lo or j >= hi or not act[i] >= bar[j]:  # the bar may have risen
                    continue
                _offer(s_act, s_doc, s_pos, s_count, j, act[i], doc[i], pos[i])
                if s_count[j] == n:
                    bar[j] = s_act[j, 0]

