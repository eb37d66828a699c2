"""Training precision: auto on the CPU is today's fp32, bf16 autocast learns as well, the matmul mode
is restored, fp32 weights and Adam state, which precision a device can run, and resume under another."""

from __future__ import annotations

import json

import pytest
import torch

from mechdiff.diffing.activations.cache import from_tensor
from mechdiff.diffing.crosscoder import module as module_mod
from mechdiff.diffing.crosscoder import ops
from mechdiff.diffing.crosscoder.config import CrosscoderConfig
from mechdiff.diffing.crosscoder.module import CrossCoder
from mechdiff.diffing.crosscoder.precision import (
    matmul_scope,
    requested_precision,
    resolve_precision,
)
from mechdiff.diffing.crosscoder.train import (
    TrainState,
    fve_per_model,
    make_optimizer,
    train_crosscoder,
    train_step,
)
from mechdiff.errors import InputError, UsageError
from mechdiff.training import Checkpointing, latest_checkpoint

BF16_FVE_TOLERANCE = 0.02  # bf16 has 8 mantissa bits: the encoder's pre-activations round at ~0.4%
MATMUL = torch.backends.cuda.matmul
NEW_API = hasattr(MATMUL, "fp32_precision")




def _mode() -> str:
    if NEW_API:
        return MATMUL.fp32_precision
    return "tf32" if MATMUL.allow_tf32 else "ieee"


@pytest.fixture
def user_chose_tf32():
    """The user switched TF32 on for their own matmuls before calling mechdiff."""
    if NEW_API:
        before, MATMUL.fp32_precision = MATMUL.fp32_precision, "tf32"
    else:
        before, MATMUL.allow_tf32 = MATMUL.allow_tf32, True
    yield
    if NEW_API:
        MATMUL.fp32_precision = before
    else:
        MATMUL.allow_tf32 = before


def _data(n_rows: int = 512) -> object:
    gen = torch.Generator().manual_seed(3)
    return from_tensor(torch.randn(n_rows, 2, 8, generator=gen) @ torch.randn(8, 8, generator=gen))


def _planted(n_rows: int, seed: int, d: int = 24, n_features: int = 48) -> torch.Tensor:
    """[n_rows, 2, d]: sparse features, the first half shared by both models, the rest per model."""
    gen = torch.Generator().manual_seed(0)  # the same dictionary for training and held-out rows
    feats = torch.randn(n_features, 2, d, generator=gen)
    feats[: n_features // 2, 1] = feats[: n_features // 2, 0]
    feats /= feats.norm(dim=-1, keepdim=True)
    gen = torch.Generator().manual_seed(seed)
    on = torch.rand(n_rows, n_features, generator=gen) < 0.06
    acts = on.float() * (0.5 + torch.rand(n_rows, n_features, generator=gen))
    return torch.einsum("bf,fmd->bmd", acts, feats)


def _config(sparsity: str = "batchtopk", **changes: object) -> CrosscoderConfig:
    values = {"dict_size": 16, "k": 2, "sparsity": sparsity, "lr": 3e-3, "warmup_steps": 3, "batch": 64,
              "tokens": 64 * 12, "dead_after_tokens": 64 * 2, "seed": 5, **changes}
    return CrosscoderConfig(**values)


def _plain_fp32_loop(data: object, config: CrosscoderConfig) -> CrossCoder:
    """The training loop as it was before precisions existed: no scope, no autocast, no resolution."""
    torch.manual_seed(config.seed)
    module = CrossCoder.from_config(config, data.n_models, data.d_model)
    module.input_scale_M.copy_(data.scales)
    optimizer = make_optimizer(module, config)
    state = TrainState(rows_since_fired=torch.zeros(config.dict_size, dtype=torch.int64))
    batches = data.iter_batches(config.batch, config.seed)
    module.train()
    while state.step < config.steps:
        train_step(module, optimizer, module.normalize(next(batches)), state, config)
    return module


@pytest.mark.parametrize("sparsity", ["batchtopk", "l1"])
def test_auto_on_the_cpu_gives_bit_identical_weights_to_the_plain_fp32_loop(sparsity: str) -> None:
    data = _data()
    reference = _plain_fp32_loop(data, _config(sparsity, precision="fp32")).state_dict()
    for precision in ("auto", "fp32"):
        trained = train_crosscoder(data, _config(sparsity, precision=precision), progress=False)
        assert trained.precision == "fp32"
        for name, value in reference.items():
            torch.testing.assert_close(trained.module.state_dict()[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("sparsity", ["batchtopk", "l1"])
def test_bf16_autocast_explains_as_much_variance_as_fp32_after_the_same_steps(sparsity: str) -> None:
    data, held_out = from_tensor(_planted(4096, seed=1)), _planted(1024, seed=2)
    fve = {}
    for precision in ("fp32", "bf16"):
        config = CrosscoderConfig(dict_size=96, k=3, sparsity=sparsity, lr=3e-3, warmup_steps=10, batch=128,
                                  tokens=128 * 150, dead_after_tokens=128 * 20, l1_coeff=0.3, seed=1,
                                  precision=precision)
        trained = train_crosscoder(data, config, progress=False)
        assert trained.precision == precision
        with torch.no_grad():  # evaluated the same way (fp32) for both
            x = trained.module.normalize(held_out)
            fve[precision] = sum(fve_per_model(x, trained.module(x)[0])) / 2
    assert fve["fp32"] > 0.6  # it learned the planted dictionary, so the comparison means something
    assert abs(fve["bf16"] - fve["fp32"]) <= BF16_FVE_TOLERANCE, fve


def test_bf16_runs_the_encoder_matmul_in_bf16_and_everything_else_in_fp32(monkeypatch) -> None:
    seen: dict[str, list[torch.dtype]] = {"pre_acts": [], "encode_in": [], "decode_in": []}
    pre_acts, encode, decode = CrossCoder.pre_acts, ops._SparseEncode.apply, module_mod.sparse_decode

    def spy_pre_acts(self, x):
        out = pre_acts(self, x)
        seen["pre_acts"].append(out.dtype)
        return out

    def spy_encode(pre_values, indices, offsets, x, w_enc, b_enc):
        seen["encode_in"] += [pre_values.dtype, x.dtype]
        return encode(pre_values, indices, offsets, x, w_enc, b_enc)

    def spy_decode(values, indices, offsets, w_dec):
        seen["decode_in"] += [values.dtype, w_dec.dtype]
        return decode(values, indices, offsets, w_dec)

    monkeypatch.setattr(CrossCoder, "pre_acts", spy_pre_acts)
    monkeypatch.setattr(ops._SparseEncode, "apply", spy_encode)
    monkeypatch.setattr(module_mod, "sparse_decode", spy_decode)
    config = _config(precision="bf16", aux_alpha=1 / 32)
    module = CrossCoder.from_config(config, 2, 8)
    optimizer = make_optimizer(module, config)
    state = TrainState(rows_since_fired=torch.zeros(16, dtype=torch.int64))
    state.rows_since_fired[8:] = 10**6  # dead: the auxiliary loss runs too
    x = torch.randn(64, 2, 8, generator=torch.Generator().manual_seed(0))
    stats = train_step(module, optimizer, x, state, config)
    assert seen["pre_acts"] == [torch.bfloat16]
    assert set(seen["encode_in"]) == set(seen["decode_in"]) == {torch.float32}
    assert len(seen["encode_in"]) == 4  # the batch top-k and the auxiliary top-k
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in module.parameters())
    slots = [v for s in optimizer.state.values() for v in s.values() if v.dim() > 0]
    assert slots and all(v.dtype == torch.float32 for v in slots)  # Adam's moments
    assert all(torch.isfinite(torch.tensor(v)) for v in (stats.loss, *stats.fve))


def test_training_sets_the_matmul_mode_for_the_call_only(user_chose_tf32) -> None:
    inside: list[str] = []
    train_crosscoder(_data(), _config(), progress=False, on_step=lambda step, stats: inside.append(_mode()))
    assert set(inside) == {"ieee"}  # fp32 means IEEE fp32 even when the user turned TF32 on
    assert _mode() == "tf32"

    def fail(step, stats):
        if step == 2:
            raise RuntimeError("stopped at step 2")

    with pytest.raises(RuntimeError, match="step 2"):
        train_crosscoder(_data(), _config(), progress=False, on_step=fail)
    assert _mode() == "tf32"


def test_matmul_scope_turns_tf32_on_and_restores_after_an_exception() -> None:
    before = _mode()
    with pytest.raises(ValueError), matmul_scope("tf32"):
        assert _mode() == "tf32"
        raise ValueError
    assert _mode() == before


def test_which_precision_a_device_runs(monkeypatch) -> None:
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(UsageError, match="tf32 is a CUDA matmul mode"):
        resolve_precision("tf32", "cpu")
    with pytest.raises(UsageError, match="must be one of"):
        resolve_precision("fp16", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, auto in (((8, 0), "tf32"), ((9, 0), "tf32"), ((7, 5), "fp32")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert resolve_precision("auto", "cuda:1") == auto
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    with pytest.raises(UsageError, match="bfloat16 support"):
        resolve_precision("bf16", "cuda")
    assert requested_precision("auto", "bfloat16") == "bf16"  # --dtype bfloat16 trains in bf16 ...
    assert requested_precision("fp32", "bfloat16") == "fp32"  # ... unless the user says otherwise
    assert requested_precision("auto", "float32") == "auto"
    with pytest.raises(ValueError, match="precision must be one of"):
        CrosscoderConfig(precision="fp16")


def test_resume_accepts_the_same_resolved_precision_and_refuses_another(tmp_path) -> None:
    data = _data()
    whole = train_crosscoder(data, _config(), progress=False).module
    train_crosscoder(data, _config(precision="fp32"), checkpointing=Checkpointing(tmp_path, stop_after=5),
                     progress=False)
    with pytest.raises(InputError, match="precision: 'fp32' there, 'bf16' now"):
        train_crosscoder(data, _config(precision="bf16"), checkpointing=Checkpointing(tmp_path, resume=True),
                         progress=False)
    resumed = train_crosscoder(data, _config(precision="auto"), checkpointing=Checkpointing(tmp_path, resume=True),
                               progress=False)  # auto resolves to fp32 on the CPU: the same run
    assert resumed.state.step == 12
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.module.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_a_checkpoint_from_before_precisions_resumes_as_fp32(tmp_path) -> None:
    data = _data()
    train_crosscoder(data, _config(), checkpointing=Checkpointing(tmp_path, stop_after=5), progress=False)
    state_file = latest_checkpoint(tmp_path) / "state.json"
    meta = json.loads(state_file.read_text())
    assert meta["config"].pop("precision") == "fp32"  # the resolved precision is what a checkpoint records
    state_file.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="precision: 'fp32' there, 'bf16' now"):
        train_crosscoder(data, _config(precision="bf16"), checkpointing=Checkpointing(tmp_path, resume=True),
                         progress=False)
    resumed = train_crosscoder(data, _config(), checkpointing=Checkpointing(tmp_path, resume=True), progress=False)
    assert resumed.state.step == 12
