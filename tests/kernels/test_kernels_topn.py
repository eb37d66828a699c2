"""TopN: numba heaps vs torch reference vs a brute-force sort; merging and state round trip."""

import math

import numpy as np
import pytest

from mechdiff.kernels import TopN


def brute_force(latent, act, doc, pos, n_latents, n):
    out_act = np.full((n_latents, n), -np.inf, np.float32)
    out_doc = np.full((n_latents, n), -1)
    out_pos = np.full((n_latents, n), -1)
    for j in range(n_latents):
        rows = [(-a, d, p) for lat, a, d, p in zip(latent, act, doc, pos, strict=True)
                if lat == j and not math.isnan(a) and a != -np.inf]
        for k, (neg_a, d, p) in enumerate(sorted(rows)[:n]):
            out_act[j, k], out_doc[j, k], out_pos[j, k] = -neg_a, d, p
    return out_act, out_doc, out_pos


def entries(m, n_latents, seed):
    rng = np.random.default_rng(seed)
    # small integer activations force many ties, broken by (doc, pos)
    act = rng.integers(0, 6, m).astype(np.float32)
    act[::13] = np.nan
    act[::17] = -np.inf
    return (rng.integers(0, n_latents, m), act, rng.integers(0, 40, m), rng.integers(0, 9, m))


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize(("m", "n_latents", "n", "chunk"), [
    (500, 7, 3, 61), (1, 1, 1, 1), (0, 3, 2, 5), (331, 29, 5, 331), (40, 101, 4, 7),
    (3000, 13, 16, 250)])  # last: rows of 16, four heap levels
def test_streaming_matches_brute_force(monkeypatch, backend, m, n_latents, n, chunk):
    monkeypatch.setenv("MECHDIFF_KERNELS", backend)
    lat, act, doc, pos = entries(m, n_latents, seed=m)
    top = TopN(n_latents, n)
    for s in range(0, m, chunk):
        top.update(lat[s:s + chunk], act[s:s + chunk], doc[s:s + chunk], pos[s:s + chunk])
    for got, want in zip(top.result(), brute_force(lat, act, doc, pos, n_latents, n), strict=True):
        np.testing.assert_array_equal(got, want)


def test_merge_of_ranks_equals_one_run():
    lat, act, doc, pos = entries(600, 11, seed=5)
    whole, left, right = TopN(11, 4), TopN(11, 4), TopN(11, 4)
    whole.update(lat, act, doc, pos)
    left.update(lat[::2], act[::2], doc[::2], pos[::2])
    right.update(lat[1::2], act[1::2], doc[1::2], pos[1::2])
    before = left.result()
    merged = left.merge(right)
    for got, want in zip(merged.result(), whole.result(), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(left.result()[0], before[0])  # inputs unchanged


def test_state_round_trip():
    lat, act, doc, pos = entries(200, 9, seed=8)
    top = TopN(9, 3)
    top.update(lat, act, doc, pos)
    state = top.state_dict()
    assert set(state) == {"act", "doc", "pos"} and state["act"].shape == (9, 3)
    for got, want in zip(TopN.from_state(state).result(), top.result(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_few_examples_are_padded():
    top = TopN(3, 2)
    top.update(np.array([1, 1, 1]), np.array([0.5, 2.0, 1.0], np.float32),
               np.array([7, 8, 9]), np.array([0, 1, 2]))
    act, doc, pos = top.result()
    np.testing.assert_array_equal(act, [[-np.inf, -np.inf], [2.0, 1.0], [-np.inf, -np.inf]])
    np.testing.assert_array_equal(doc, [[-1, -1], [8, 9], [-1, -1]])
    np.testing.assert_array_equal(pos, [[-1, -1], [1, 2], [-1, -1]])


def test_bad_input_is_rejected():
    top = TopN(3, 2)
    with pytest.raises(ValueError, match="latent ids"):
        top.update(np.array([3]), np.array([1.0]), np.array([0]), np.array([0]))
    with pytest.raises(ValueError, match="equal length"):
        top.update(np.array([0, 1]), np.array([1.0]), np.array([0]), np.array([0]))
    with pytest.raises(ValueError, match="merge"):
        top.merge(TopN(3, 3))


@pytest.mark.parametrize("threads", [1, 2])
def test_slices_and_thread_counts_keep_the_same_examples(monkeypatch, threads):
    # many ties (small integer activations) and rows that fill mid-update; the kernel
    # cut into slices of a few entries and run on 1 or 2 threads must equal the reference
    import numba

    from mechdiff.kernels import topn

    lat, act, doc, pos = entries(5000, 37, seed=11)
    monkeypatch.setenv("MECHDIFF_KERNELS", "reference")
    want = TopN(37, 6)
    want.update(lat, act, doc, pos)
    monkeypatch.setenv("MECHDIFF_KERNELS", "numba")
    monkeypatch.setattr(topn, "_SLICE_ENTRIES", 97)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        got = TopN(37, 6)
        for s in range(0, 5000, 1700):
            got.update(lat[s:s + 1700], act[s:s + 1700], doc[s:s + 1700], pos[s:s + 1700])
    finally:
        numba.set_num_threads(before)
    for g, w in zip(got.result(), want.result(), strict=True):
        np.testing.assert_array_equal(g, w)
