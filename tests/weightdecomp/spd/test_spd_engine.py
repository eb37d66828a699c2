"""SPD building blocks checked against values computed by hand."""

import math

import pytest
import torch
from torch import nn

from mechdiff.errors import InputError
from mechdiff.weightdecomp.spd.ci import (
    CIBank,
    hard_sigmoid,
    lower_leaky_hard_sigmoid,
    upper_leaky_hard_sigmoid,
)
from mechdiff.weightdecomp.spd.components import (
    ComponentHooks,
    ComponentLayer,
    default_forward,
    find_targets,
)
from mechdiff.weightdecomp.spd.config import SPDConfig
from mechdiff.weightdecomp.spd.losses import (
    faithfulness_loss,
    importance_minimality_loss,
    kl_distance,
    mse_distance,
    output_distance,
    sample_masks,
)
from mechdiff.weightdecomp.spd.trainer import lr_schedule


def test_hard_sigmoids_by_hand():
    x = torch.tensor([-1.0, 0.25, 3.0])
    assert hard_sigmoid(x).tolist() == [0.0, 0.25, 1.0]
    # leaky below 0 (masks): -1 -> 0.01 * -1; leaky above 1 (penalty): 3 -> 1 + 0.01 * 2
    assert lower_leaky_hard_sigmoid(x, 0.01).tolist() == pytest.approx([-0.01, 0.25, 1.0])
    assert upper_leaky_hard_sigmoid(x, 0.01).tolist() == pytest.approx([0.0, 0.25, 1.02])


def test_ci_bank_equals_one_mlp_per_component():
    torch.manual_seed(0)
    bank = CIBank(3, 4)
    inner = torch.randn(5, 3)
    out = bank(inner)
    for c in range(3):
        mlp = nn.Sequential(nn.Linear(1, 4), nn.GELU(), nn.Linear(4, 1))
        with torch.no_grad():
            mlp[0].weight.copy_(bank.w_in_CH[c][:, None])
            mlp[0].bias.copy_(bank.b_in_CH[c])
            mlp[2].weight.copy_(bank.w_out_CH[c][None, :])
            mlp[2].bias.fill_(bank.b_out_C[c])
        torch.testing.assert_close(out[:, c], mlp(inner[:, c : c + 1])[:, 0])


def test_losses_by_hand():
    # faithfulness: W = [[1, 2]], components sum to [[0, 2]]: squared error 1 over 2 parameters.
    assert float(faithfulness_loss([torch.tensor([[1.0, 2.0]])], [torch.tensor([[0.0, 2.0]])])) == 0.5
    # importance: one layer, inputs g = (0.5, 1) and (0, 0), p = 2: (0.25 + 1 + 0 + 0) / 2 inputs.
    ci = torch.tensor([[0.5, 1.0], [0.0, 0.0]])
    assert float(importance_minimality_loss([ci], 2.0, 0.0)) == pytest.approx(0.625)
    assert float(importance_minimality_loss([ci, ci], 1.0, 0.0)) == pytest.approx(1.5)
    # per-layer factors: 0.75 (layer 1, p = 1) * 1 + 0.75 * 3
    assert float(importance_minimality_loss([ci, ci], 1.0, 0.0, [1.0, 3.0])) == pytest.approx(3.0)
    assert float(mse_distance(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]))) == 2.0


def test_kl_distance_by_hand():
    target = torch.log(torch.tensor([[0.5, 0.5]]))
    output = torch.log(torch.tensor([[0.25, 0.75]]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(kl_distance(output, target)) == pytest.approx(expected, rel=1e-6)
    assert float(kl_distance(target, target)) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(InputError):
        output_distance("l1")


def test_masks_lie_between_importance_and_one():
    g = torch.tensor([[0.0, 0.3, 1.0]]).expand(1000, 3)
    m = sample_masks({"a": g}, torch.Generator().manual_seed(0))["a"]
    assert bool((m >= g).all()) and bool((m <= 1).all())
    assert torch.equal(m[:, 2], torch.ones(1000))
    assert float(m[:, 0].mean()) == pytest.approx(0.5, abs=0.05)  # U(0, 1) when g = 0


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 3)
        self.fc = nn.Linear(3, 2)

    def forward(self, ids):
        return self.fc(self.emb(ids))


def _exact_layer(kind: str, weight_OI: torch.Tensor, bias) -> ComponentLayer:
    """Components that reproduce the weight exactly: V = W^T, U = I."""
    layer = ComponentLayer(kind, weight_OI, bias, weight_OI.shape[0], 2)
    with torch.no_grad():
        layer.V_IC.copy_(weight_OI.T)
        layer.U_CO.copy_(torch.eye(weight_OI.shape[0]))
    return layer


@pytest.mark.parametrize("kind", ["linear", "conv1d", "embedding"])
def test_masked_output_of_exact_components(kind):
    torch.manual_seed(0)
    if kind == "conv1d":
        from transformers.pytorch_utils import Conv1D

        module = Conv1D(2, 3)  # weight [in=3, out=2]
        nn.init.normal_(module.bias)
        W_OI, x = module.weight.T, torch.randn(4, 3)
    elif kind == "linear":
        module = nn.Linear(3, 2)
        W_OI, x = module.weight, torch.randn(4, 3)
    else:
        module = nn.Embedding(5, 2)
        W_OI, x = module.weight.T, torch.tensor([0, 4, 2, 2])
    bias = getattr(module, "bias", None)
    layer = _exact_layer(kind, W_OI.detach(), bias)
    with torch.no_grad():
        torch.testing.assert_close(layer.masked_output(x, torch.ones(4, 2)), module(x))
        torch.testing.assert_close(layer.weight_OI(), W_OI)
        zeroed = layer.masked_output(x, torch.tensor([[1.0, 0.0]]).expand(4, 2))
        torch.testing.assert_close(zeroed[:, 0], module(x)[:, 0])  # component 0 is output row 0
        assert torch.equal(zeroed[:, 1], torch.zeros(4) if bias is None else bias[1].expand(4))


def test_hooks_capture_inputs_and_replace_outputs():
    torch.manual_seed(0)
    model = _Tiny()
    targets = find_targets(model, ["fc", "emb"])
    assert list(targets) == ["emb", "fc"]  # model order, not glob order
    layers = {"emb": _exact_layer("embedding", model.emb.weight.T.detach(), None),
              "fc": _exact_layer("linear", model.fc.weight.detach(), model.fc.bias)}
    hooks = ComponentHooks(targets, layers)
    ids = torch.tensor([[1, 2, 3]])
    target = hooks.run_target(model, ids, default_forward)
    assert torch.equal(hooks.inputs["emb"], ids)
    torch.testing.assert_close(hooks.inputs["fc"], model.emb(ids))
    ones = {"emb": torch.ones(1, 3, 3), "fc": torch.ones(1, 3, 2)}
    with torch.no_grad():
        torch.testing.assert_close(hooks.run_masked(model, ids, default_forward, ones), target)
        only_bias = hooks.run_masked(model, ids, default_forward, {"emb": torch.zeros(1, 3, 3)})
    torch.testing.assert_close(only_bias, model.fc.bias.expand(1, 3, 2))
    hooks.remove()
    torch.testing.assert_close(model(ids), target)


def test_find_targets_rejects_bad_globs():
    model = _Tiny()
    with pytest.raises(InputError, match="matched no module"):
        find_targets(model, ["nope*"])
    with pytest.raises(InputError, match="unsupported"):
        find_targets(nn.Sequential(nn.ReLU()), ["0"])
    with pytest.raises(InputError):
        find_targets(model, [])


def test_config_validation_and_schedules():
    with pytest.raises(InputError, match="n_components"):
        SPDConfig(n_components=0)
    with pytest.raises(InputError, match="unknown SPD config keys"):
        SPDConfig.from_dict({"C": 3})
    with pytest.raises(InputError, match="importance_module_scale"):
        SPDConfig(importance_module_scale={"linear2": -1.0})
    cfg = SPDConfig(steps=100, pnorm=1.0, pnorm_start=2.0, pnorm_anneal_frac=0.5, lr=1.0, lr_warmup_frac=0.1,
                    importance_module_scale={"*.mlp.*": 2.0, "*": 0.5})
    assert SPDConfig.from_dict(cfg.to_dict()) == cfg
    # the first matching glob wins; unmatched layers keep factor 1 (SPDConfig())
    assert (cfg.importance_scale("h.0.mlp.c_fc"), cfg.importance_scale("wte")) == (2.0, 0.5)
    assert SPDConfig().importance_scale("wte") == 1.0
    assert cfg.pnorm_at(0) == 2.0 and cfg.pnorm_at(25) == 1.5 and cfg.pnorm_at(80) == 1.0
    # warm-up 10 steps: step 4 -> 5/10; cosine over the remaining 90: halfway (step 55) -> 0.5
    lr_at = lr_schedule(cfg).at
    assert lr_at(4) == pytest.approx(0.5)
    assert lr_at(55) == pytest.approx(0.5)
    assert lr_at(99) < 0.01


def test_trainer_scales_each_layers_importance_penalty():
    # layer factors reach the loss: with "fc" scaled by 0 the penalty is the embedding's
    # alone, and scaling the embedding by 3 triples it
    from mechdiff.weightdecomp.spd.trainer import SPDTrainer

    ids = torch.tensor([[1, 2, 3]])

    def importance(scale):
        torch.manual_seed(0)
        config = SPDConfig(n_components=3, importance_module_scale=scale)
        trainer = SPDTrainer(_Tiny(), ["emb", "fc"], config)
        return float(trainer.losses(ids, 0).importance_minimality.detach())

    emb_only = importance({"fc": 0.0})
    assert 0 < emb_only < importance(None)
    assert importance({"fc": 0.0, "emb": 3.0}) == pytest.approx(3 * emb_only)
