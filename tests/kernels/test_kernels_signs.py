"""Random sign flips: numba loop vs numpy reference, in-place restore, block offsets."""

import math

import numpy as np
import pytest
import torch

from mechdiff.kernels import signs
from mechdiff.kernels.signs import flip_signs, flip_signs_reference, signs_flipped


@pytest.mark.parametrize("shape", [(1,), (63,), (64,), (65,), (3, 7), (129, 65), (1000, 1001)])
def test_numba_matches_reference(shape):
    D = torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape)))
    got = flip_signs(D, seed=11)
    torch.testing.assert_close(got, flip_signs_reference(D, seed=11), rtol=0, atol=0)
    assert torch.equal(got.abs(), D.abs())


def test_signs_look_random_and_depend_on_the_seed():
    ones = torch.ones(1 << 20)
    a, b = flip_signs(ones, seed=1), flip_signs(ones, seed=2)
    assert abs(float(a.mean())) < 0.005  # half flipped: mean of +-1 within ~5 sigma
    assert abs(float((a[1:] * a[:-1]).mean())) < 0.005  # neighbours uncorrelated
    assert abs(float((a * b).mean())) < 0.005  # other seed, other signs


def test_in_place_flip_restores_every_bit():
    D = torch.randn(257, 130)
    D[0, :4] = torch.tensor([math.nan, math.inf, -math.inf, -0.0])
    before = D.clone()
    with signs_flipped(D, seed=3) as flipped:
        assert flipped.data_ptr() == D.data_ptr()  # no copy
        expected = flip_signs_reference(before, seed=3)
        assert torch.equal(flipped[1:], expected[1:])
    assert torch.equal(D.view(torch.int32), before.view(torch.int32))  # NaN and -0.0 too


def test_non_contiguous_input_is_copied_and_left_alone():
    D = torch.randn(40, 80)
    view = D[:, ::2]
    before = D.clone()
    with signs_flipped(view, seed=4) as flipped:
        assert flipped.is_contiguous() and flipped.data_ptr() != D.data_ptr()
        torch.testing.assert_close(flipped, flip_signs_reference(view, seed=4), rtol=0, atol=0)
    assert torch.equal(D, before)


def test_blocks_at_word_offsets_flip_like_the_whole():
    # tensors off the CPU get their signs a block at a time; each block must match the
    # same stretch of the whole matrix's signs
    n, key = 1000, signs._key(9)
    whole = flip_signs_reference(torch.ones(n), seed=9).numpy()
    for start in (0, 64, 320, 960):
        out = np.empty(n - start, np.float32)
        signs._flip_kernel(np.ones(n - start, np.float32), out, key, np.uint64(start))
        np.testing.assert_array_equal(out, whole[start:])
