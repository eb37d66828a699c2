import math

import pytest
import torch

from mechdiff.toylm.model import ToyLMSize, make_model
from mechdiff.toylm.tokenizer import build_tokenizer
from mechdiff.toylm.train import (
    _batches,
    deterministic,
    encode_documents,
    lr_schedule,
    next_token_loss,
    prob_after,
)

SPECIAL = {"pad": 0, "bos": 1, "eos": 2, "unk": 3}
MICRO = ToyLMSize(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_mlp=32, max_len=12)


def test_lr_schedule_warms_up_then_decays_to_a_tenth():
    # warmup 4: steps 0..3 -> 0.25, 0.5, 0.75, 1.0 of peak; cosine from step 4 to 10% at the end.
    lr_at = lr_schedule(14, 4, 2.0).at
    assert [lr_at(s) for s in range(4)] == [0.5, 1.0, 1.5, 2.0]
    assert lr_at(4) == pytest.approx(2.0)
    assert lr_at(9) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))  # halfway: cos = 0
    assert lr_at(14) == pytest.approx(0.2)


def test_encode_adds_bos_eos_cuts_and_pads():
    tok = build_tokenizer(["a", "b", "c"])
    ids = encode_documents(tok, ["a b", "c c c c c"], max_len=5, eos_id=2, pad_id=0)
    # "a"=4 "b"=5 "c"=6; the long document is cut, losing its <eos>.
    assert ids.tolist() == [[1, 4, 5, 2, 0], [1, 6, 6, 6, 6]]


def test_batches_cover_each_document_once_per_epoch():
    ids = torch.arange(40).repeat_interleave(3).view(40, 3) + 1  # no pads, rows distinguishable
    ids[::2, 2] = 0  # half the rows shorter, to exercise the length sort
    seen = [int(r[0]) for b in _batches(ids, steps=10, batch_size=4, pad_id=0, seed=0) for r in b]
    assert sorted(seen) == list(range(1, 41))
    again = [int(r[0]) for b in _batches(ids, steps=10, batch_size=4, pad_id=0, seed=0) for r in b]
    assert again == seen


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_loss_ignores_padding(arch):
    model = make_model(arch, MICRO, vocab_size=10, special=SPECIAL, seed=0).eval()
    doc = torch.tensor([[1, 5, 6, 7, 2]])
    padded = torch.tensor([[1, 5, 6, 7, 2, 0, 0], [1, 8, 9, 2, 0, 0, 0]])
    with torch.no_grad():
        alone = next_token_loss(model, doc, pad_id=0)
        logits = model(input_ids=doc).logits[0]
        by_hand = torch.nn.functional.cross_entropy(logits[:-1], doc[0, 1:])
        both = next_token_loss(model, padded, pad_id=0)
        second = next_token_loss(model, padded[1:, :4], pad_id=0)
    assert alone.item() == pytest.approx(by_hand.item(), rel=1e-5)
    # 4 targets from the first document, 3 from the second; pads add nothing.
    assert both.item() == pytest.approx((4 * alone.item() + 3 * second.item()) / 7, rel=1e-5)


def test_prob_after_averages_over_cue_positions():
    model = make_model("gpt2", MICRO, vocab_size=10, special=SPECIAL, seed=0).eval()
    ids = torch.tensor([[1, 5, 6, 5, 2], [1, 7, 5, 2, 0]])
    with torch.no_grad():
        p = model(input_ids=ids).logits.softmax(-1)[..., 9]
    expected = (p[0, 1] + p[0, 3] + p[1, 2]) / 3
    assert prob_after(model, ids, cue_id=5, next_id=9, pad_id=0) == pytest.approx(float(expected))
    assert math.isnan(prob_after(model, ids, cue_id=8, next_id=9, pad_id=0))


def test_deterministic_restores_caller_settings():
    before = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    with deterministic(threads=1):
        assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1
    assert (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()) == before


def test_model_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = make_model("llama", MICRO, vocab_size=10, special=SPECIAL, seed=7)
    assert torch.rand(1) == expected_next
    b = make_model("llama", MICRO, vocab_size=10, special=SPECIAL, seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.config.num_key_value_heads < a.config.num_attention_heads
