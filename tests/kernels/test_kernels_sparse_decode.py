"""Sparse decode and latent-scaling sums: numba vs reference vs dense torch."""

import pytest
import torch

from mechdiff.kernels import latent_scaling_sums, sparse_decode
from mechdiff.kernels.decode import (
    decode_backward_numba,
    decode_backward_reference,
    decode_forward_numba,
    decode_forward_reference,
)
from mechdiff.kernels.scaling import (
    latent_scaling_numba,
    latent_scaling_reference,
)

TOL = {"rtol": 1e-5, "atol": 1e-5}


def csr_batch(counts: list[int], n_latents: int, seed: int):
    """Random CSR batch with the given number of active latents per row (distinct per row)."""
    gen = torch.Generator().manual_seed(seed)
    indices = [torch.randperm(n_latents, generator=gen)[:c] for c in counts]
    offsets = torch.zeros(len(counts) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor(counts, dtype=torch.int64), 0)
    idx = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int64)
    values = torch.rand(int(offsets[-1]), generator=gen) + 0.1
    return values, idx.long(), offsets


def dense(values, indices, offsets, n_latents):
    rows = torch.repeat_interleave(torch.arange(offsets.numel() - 1), offsets.diff())
    out = torch.zeros(offsets.numel() - 1, n_latents, dtype=values.dtype)
    return out.index_put((rows, indices), values, accumulate=True)


CASES = [  # (counts per row, F, D): empty rows, one element, primes
    ([3, 0, 5, 1, 0, 7], 13, 11),
    ([1], 1, 1),
    ([0, 0, 0], 7, 5),
    ([], 3, 2),
    ([17, 2, 31, 0, 5, 29, 3], 97, 131),
]


@pytest.mark.parametrize(("counts", "n_latents", "dim"), CASES)
def test_decode_forward_backward_match_dense_autograd(counts, n_latents, dim):
    values, indices, offsets = csr_batch(counts, n_latents, seed=len(counts))
    W = torch.randn(n_latents, dim, generator=torch.Generator().manual_seed(1))
    grad = torch.randn(len(counts), dim, generator=torch.Generator().manual_seed(2))

    v, w = values.clone().requires_grad_(), W.clone().requires_grad_()
    out = sparse_decode(v, indices, offsets, w)
    out.backward(grad)

    f_dense = dense(values, indices, offsets, n_latents).requires_grad_()
    w_dense = W.clone().requires_grad_()
    want = f_dense @ w_dense
    want.backward(grad)
    torch.testing.assert_close(out, want.detach(), **TOL)
    torch.testing.assert_close(w.grad, w_dense.grad, **TOL)
    rows = torch.repeat_interleave(torch.arange(len(counts)), offsets.diff())
    torch.testing.assert_close(v.grad, f_dense.grad[rows, indices], **TOL)


@pytest.mark.parametrize(("counts", "n_latents", "dim"), CASES)
def test_numba_matches_reference(counts, n_latents, dim):
    values, indices, offsets = csr_batch(counts, n_latents, seed=7)
    W = torch.randn(n_latents, dim)
    grad = torch.randn(len(counts), dim)
    torch.testing.assert_close(decode_forward_numba(values, indices, offsets, W),
                               decode_forward_reference(values, indices, offsets, W), **TOL)
    for got, want in zip(decode_backward_numba(grad, values, indices, offsets, W),
                         decode_backward_reference(grad, values, indices, offsets, W), strict=True):
        torch.testing.assert_close(got, want, **TOL)


def test_repeated_latent_in_a_row_adds_up():
    # row 0 = 2 * W[1] + 3 * W[1]; row 1 = 1 * W[0]
    W = torch.tensor([[1.0, 0.0], [0.5, -1.0]])
    out = sparse_decode(torch.tensor([2.0, 3.0, 1.0]), torch.tensor([1, 1, 0]),
                        torch.tensor([0, 2, 3]), W)
    torch.testing.assert_close(out, torch.tensor([[2.5, -5.0], [1.0, 0.0]]))


def test_grad_of_values_only_leaves_W_untouched():
    values, indices, offsets = csr_batch([2, 3], 5, seed=0)
    v = values.clone().requires_grad_()
    W = torch.randn(5, 4)
    sparse_decode(v, indices, offsets, W).sum().backward()
    torch.testing.assert_close(v.grad, W.sum(1)[indices])


def test_bad_csr_is_rejected():
    W = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="offsets"):
        sparse_decode(torch.ones(2), torch.tensor([0, 1]), torch.tensor([0, 3]), W)
    with pytest.raises(ValueError, match="indices"):
        sparse_decode(torch.ones(2), torch.tensor([0, 4]), torch.tensor([0, 2]), W)
    with pytest.raises(ValueError, match="non-decreasing"):
        sparse_decode(torch.ones(2), torch.tensor([0, 1]), torch.tensor([0, 2, 1, 2]), W)


def test_latent_scaling_by_hand():
    # rows: {latent 0: 2}, {latent 0: 1, latent 2: 3}; Y = [[1, 1], [4, -2]]
    values, indices = torch.tensor([2.0, 1.0, 3.0]), torch.tensor([0, 0, 2])
    offsets, Y = torch.tensor([0, 1, 3]), torch.tensor([[1.0, 1.0], [4.0, -2.0]])
    sum_f2, sum_fy = latent_scaling_sums(values, indices, offsets, Y, n_latents=3)
    assert sum_f2.dtype == sum_fy.dtype == torch.float64
    torch.testing.assert_close(sum_f2, torch.tensor([5.0, 0.0, 9.0], dtype=torch.float64))
    want = torch.tensor([[6.0, 0.0], [0.0, 0.0], [12.0, -6.0]], dtype=torch.float64)
    torch.testing.assert_close(sum_fy, want)


@pytest.mark.parametrize(("counts", "n_latents", "dim"), CASES)
def test_latent_scaling_numba_matches_reference(counts, n_latents, dim):
    values, indices, offsets = csr_batch(counts, n_latents, seed=11)
    Y = torch.randn(len(counts), dim)
    for got, want in zip(latent_scaling_numba(values, indices, offsets, Y, n_latents),
                         latent_scaling_reference(values, indices, offsets, Y, n_latents),
                         strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
