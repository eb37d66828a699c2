"""The crosscoder module and trainer: exact BatchTopK, sparse = dense gradients, schedule, resume."""

from __future__ import annotations

import pytest
import torch

from mechdiff.diffing.activations.cache import from_tensor
from mechdiff.diffing.crosscoder.config import CrosscoderConfig
from mechdiff.diffing.crosscoder.module import (
    CrossCoder,
    SparseCode,
    batch_topk_positions,
)
from mechdiff.diffing.crosscoder.train import (
    TrainState,
    lr_schedule,
    make_optimizer,
    train_crosscoder,
    train_step,
)
from mechdiff.errors import InputError
from mechdiff.training import Checkpointing, latest_checkpoint


def test_config_rejects_bad_values_and_unknown_keys() -> None:
    with pytest.raises(ValueError, match="sparsity"):
        CrosscoderConfig(sparsity="topk")
    with pytest.raises(ValueError, match="k must be <= dict_size"):
        CrosscoderConfig(dict_size=8, k=16)
    with pytest.raises(ValueError, match="tokens"):
        CrosscoderConfig(batch=64, tokens=32)
    with pytest.raises(ValueError, match="unknown"):
        CrosscoderConfig.from_dict({**CrosscoderConfig().to_dict(), "lr_decay": 1})
    assert CrosscoderConfig(dict_size=8, k=16, sparsity="l1").k == 16  # k unused by L1


def test_lr_schedule_warms_up_then_decays_to_zero() -> None:
    # 100 steps, warm-up 10, decay over the last 20: step 0 -> 1/10, 50 -> full, 90 -> half
    config = CrosscoderConfig(lr=1.0, warmup_steps=10, decay_frac=0.2, batch=1, tokens=100)
    schedule = lr_schedule(config)
    assert schedule.at(0) == pytest.approx(0.1)
    assert schedule.at(50) == pytest.approx(1.0)
    assert schedule.at(90) == pytest.approx(0.5)
    assert schedule.at(99) == pytest.approx(0.05)


@pytest.mark.parametrize("shape", [(3, 5), (700, 1500)])  # direct top-k and the sampled-threshold path
def test_batch_topk_positions_is_exact(shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(shape, generator=gen).clamp_min(0.3) - 0.3  # ~30% zeros
    n_keep = shape[0] * 2
    got = batch_topk_positions(scores, n_keep)
    want = scores.reshape(-1).topk(n_keep).indices.sort().values
    assert torch.equal(got, want)


def test_batch_topk_keeps_only_positive_scores() -> None:
    scores = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    assert batch_topk_positions(scores, 5).tolist() == [1, 3]


def _dense_reference_loss(module: CrossCoder, x: torch.Tensor, code: SparseCode) -> torch.Tensor:
    acts = torch.relu(module.pre_acts(x)) * code.to_dense(module.dict_size).gt(0)
    recon = torch.einsum("bf,fmd->bmd", acts, module.W_dec_FMD) + module.b_dec_MD
    return (x - recon).pow(2).sum(dim=(1, 2)).mean()


def test_sparse_gradients_equal_dense_autograd() -> None:
    gen = torch.Generator().manual_seed(0)
    module = CrossCoder(2, 6, 10, k=3)
    module.reset_parameters(0.3, gen)
    with torch.no_grad():
        module.b_enc_F.uniform_(-0.1, 0.1, generator=gen)
    x = torch.randn(7, 2, 6, generator=gen)
    code = module.encode_sparse(x, train=True)
    assert code.values.numel() == 21  # k * B, spread unevenly over rows
    sparse_loss = (x - module.decode_sparse(code)).pow(2).sum(dim=(1, 2)).mean()
    sparse_grads = torch.autograd.grad(sparse_loss, [module.W_enc_FMD, module.b_enc_F, module.W_dec_FMD, module.b_dec_MD])
    dense_loss = _dense_reference_loss(module, x, code)
    dense_grads = torch.autograd.grad(dense_loss, [module.W_enc_FMD, module.b_enc_F, module.W_dec_FMD, module.b_dec_MD])
    torch.testing.assert_close(sparse_loss, dense_loss)
    for got, want in zip(sparse_grads, dense_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_inference_threshold_selects_by_score() -> None:
    module = CrossCoder(2, 2, 3, k=1)
    with torch.no_grad():
        module.W_enc_FMD.copy_(torch.eye(3, 4).reshape(3, 2, 2))  # latent j reads input coordinate j
        module.W_dec_FMD.fill_(0.5)  # sum of decoder norms = 2 * sqrt(0.5) per latent
        module.threshold.fill_(1.0)
    x = torch.tensor([[[0.5, 0.8], [0.2, 0.0]]])  # pre = [0.5, 0.8, 0.2] -> scores x 1.414
    dense = module.encode(x)
    assert dense.tolist() == [[0.0, pytest.approx(0.8), 0.0]]  # 0.707 and 0.283 fall below 1.0


def _data(n_rows: int = 512) -> object:
    gen = torch.Generator().manual_seed(3)
    return from_tensor(torch.randn(n_rows, 2, 8, generator=gen) @ torch.randn(8, 8, generator=gen))


@pytest.mark.parametrize("sparsity", ["batchtopk", "l1"])
def test_resume_runs_only_the_remaining_steps_and_reaches_the_same_weights(tmp_path, sparsity: str) -> None:
    config = CrosscoderConfig(dict_size=16, k=2, sparsity=sparsity, lr=3e-3, warmup_steps=3, batch=64, tokens=64 * 12,
                              dead_after_tokens=64 * 2, seed=5)
    data = _data()
    whole = train_crosscoder(data, config, progress=False).module
    ckpt = tmp_path / "ckpt"
    first: list[int] = []
    train_crosscoder(data, config, checkpointing=Checkpointing(ckpt, every=4, stop_after=7), progress=False,
                     on_step=lambda step, _: first.append(step))
    assert first == list(range(1, 8))
    assert latest_checkpoint(ckpt).name == "step-00000007"  # every 4 steps, plus where it stopped
    second: list[int] = []
    resumed = train_crosscoder(data, config, checkpointing=Checkpointing(ckpt, every=4, resume=True), progress=False,
                               on_step=lambda step, _: second.append(step))
    assert second == list(range(8, 13))  # a restart from 0 would run steps 1..12 and still match the weights
    assert resumed.state.step == 12
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.module.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_resume_refuses_a_different_config(tmp_path) -> None:
    config = CrosscoderConfig(dict_size=16, k=2, lr=3e-3, warmup_steps=3, batch=64, tokens=64 * 4)
    train_crosscoder(_data(), config, checkpointing=Checkpointing(tmp_path), progress=False)
    other = CrosscoderConfig(dict_size=16, k=3, lr=3e-3, warmup_steps=3, batch=64, tokens=64 * 4)
    with pytest.raises(InputError, match="different crosscoder config"):
        train_crosscoder(_data(), other, checkpointing=Checkpointing(tmp_path, resume=True), progress=False)


def test_stream_order_is_seeded_and_skips_exactly() -> None:
    data = from_tensor(torch.arange(40, dtype=torch.float32).reshape(10, 2, 2))
    data.chunk_rows = 4  # pretend it is on disk: chunked shuffling
    first = [b[:, 0, 0].tolist() for _, b in zip(range(6), data.iter_batches(3, seed=1))]
    again = [b[:, 0, 0].tolist() for _, b in zip(range(6), data.iter_batches(3, seed=1))]
    skipped = [b[:, 0, 0].tolist() for _, b in zip(range(4), data.iter_batches(3, seed=1, start_step=2))]
    assert first == again and skipped == first[2:]
    # the first 10 rows drawn are a permutation of all 10 rows (one pass)
    assert sorted([v for batch in first for v in batch][:10]) == [4.0 * i for i in range(10)]


@pytest.mark.parametrize("aux_alpha", [0.0, 1 / 32])
def test_aux_loss_reaches_only_dead_latents_encoders(aux_alpha: float) -> None:
    gen = torch.Generator().manual_seed(0)
    config = CrosscoderConfig(dict_size=16, k=1, lr=1e-2, warmup_steps=0, batch=8, tokens=80, aux_alpha=aux_alpha,
                              dead_after_tokens=100)
    module = CrossCoder.from_config(config, 2, 4)
    with torch.no_grad():
        module.W_dec_FMD[10:] *= 1e-3  # tiny scores: the batch top-k never picks latents 10..15
        module.b_enc_F[10:] = 5.0  # but they are strongly "on", so the auxiliary top-k does
    state = TrainState(rows_since_fired=torch.zeros(16, dtype=torch.int64))
    state.rows_since_fired[10:] = 1000  # dead
    before = module.W_enc_FMD.detach().clone()
    train_step(module, make_optimizer(module, config), torch.randn(8, 2, 4, generator=gen), state, config)
    moved = (module.W_enc_FMD.detach() - before).abs().amax(dim=(1, 2)) > 0
    assert bool(moved[10:].all()) == (aux_alpha > 0)
    assert state.rows_since_fired[10:].tolist() == [1008] * 6  # the auxiliary loss does not count as firing
