"""Toy models and the ground-truth metrics (MMCS, ML2R, one-hot CI pattern)."""

import json

import numpy as np
import pytest
import torch

from mechdiff.errors import InputError
from mechdiff.weightdecomp.toys.models import (
    ResidMLPTask,
    TMSModel,
    sparse_features,
    train_tms,
)
from mechdiff.weightdecomp.toys.recipes import (
    features_with_own_component,
    mmcs_ml2r,
    run_toy,
    toy_config,
)


def test_mmcs_ml2r_by_hand():
    true_OF = np.array([[1.0, 0.0], [0.0, 2.0]])  # feature 0 -> (1, 0), feature 1 -> (0, 2)
    # Component 0 carries feature 0 exactly; component 1 carries feature 1 at half its norm.
    U_CO = np.array([[1.0, 0.0], [0.0, 1.0]])
    V_FC = np.array([[1.0, 0.0], [0.0, 1.0]])
    mmcs, ml2r, best = mmcs_ml2r(true_OF, U_CO, V_FC)
    assert mmcs == pytest.approx(1.0)
    assert ml2r == pytest.approx((1.0 + 0.5) / 2)
    assert best.tolist() == [0, 1]
    # A component pointing the opposite way has cosine -1: sign matters.
    mmcs, _, _ = mmcs_ml2r(true_OF[:, :1], U_CO[:1], -V_FC[:1, :1])
    assert mmcs == pytest.approx(-1.0)
    # Column 1 of a 45-degree component u = (1, 1)/sqrt2 has cosine 1/sqrt2 with (0, 2).
    mmcs, _, _ = mmcs_ml2r(true_OF[:, 1:], np.array([[1.0, 1.0]]) / np.sqrt(2), np.array([[1.0]]))
    assert mmcs == pytest.approx(1 / np.sqrt(2))


def test_features_with_own_component():
    firing = np.array([
        [1, 0, 0, 0],  # feature 0: only component 0 -> counts
        [0, 1, 1, 0],  # feature 1: two components -> no
        [0, 0, 0, 1],  # feature 2 and 3 share component 3 -> neither counts
        [0, 0, 0, 1],
    ], dtype=bool)
    assert features_with_own_component(firing) == 1


def test_sparse_features_probability_and_at_least_one():
    gen = torch.Generator().manual_seed(0)
    x = sparse_features(20000, 5, 0.05, gen)
    assert float((x != 0).float().mean()) == pytest.approx(0.05, abs=0.005)
    assert float(x.max()) <= 1.0 and float(x.min()) >= 0.0
    y = sparse_features(2000, 5, 0.05, gen, low=-1.0, at_least_one=True)
    assert y.shape == (2000, 5)
    assert bool((y != 0).any(dim=1).all())
    assert float(y.min()) < -0.5


def test_tms_model_and_training():
    model = train_tms(5, 2, steps=800, seed=0)
    W = model.feature_weights.detach()
    # A trained 5-2 TMS stores all five features (pentagon): every column has norm near 1.
    assert bool((W.norm(dim=0) > 0.8).all())
    torch.testing.assert_close(model.linear2.weight, W.T)
    x = torch.eye(5)
    assert float((model(x) - x).pow(2).mean()) < 0.05
    ident = TMSModel(5, 2, identity_hidden=True)
    torch.testing.assert_close(ident.hidden.weight, torch.eye(2))


def test_toy_input_validation():
    with pytest.raises(InputError, match="unknown toy"):
        run_toy("tms-3-1")
    assert toy_config("tms-40-10", steps=7).n_components == 200
    assert toy_config("tms-40-10", steps=7).steps == 7
    with pytest.raises(InputError, match="unknown SPD config keys"):
        toy_config("tms-5-2", components=3)
    with pytest.raises(InputError):
        ResidMLPTask(probability=0.0)


def test_tms_40_10_anneals_p_from_1_to_2_over_the_first_30_percent():
    # the recipe that took both matrices to exactly 40 alive at seeds 0-7 (see toy.TOY_CONFIGS)
    cfg = toy_config("tms-40-10")
    assert [cfg.pnorm_at(s) for s in (0, 3000, 6000, 19999)] == [1.0, 1.5, 2.0, 2.0]
    assert cfg.importance_scale("linear1") == 1.5 and cfg.importance_scale("linear2") == 2.0


def test_short_spd_on_tms_5_2_finds_the_feature_directions():
    # A short run (the full one to the targets lives in benchmarks/bench_spd.py):
    # the components already point along the five true feature columns and most are dead.
    from dataclasses import replace

    from mechdiff.weightdecomp.toys.recipes import TOY_CONFIGS

    report = run_toy("tms-5-2", replace(TOY_CONFIGS["tms-5-2"], steps=400), progress=False)
    assert report.mmcs >= 0.95
    assert 5 <= report.n_alive < 20
    assert np.asarray(report.ci_pattern).shape == (5, 20)
    # Every one-hot feature makes at least one component important.
    assert (np.asarray(report.ci_pattern).max(axis=1) > 0.5).all()
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["targets"]["mmcs>=0.99"] == (report.mmcs >= 0.99)
    assert doc["config"]["steps"] == 400 and "decomposition" not in doc
    assert report.steps_per_s == pytest.approx(400 / report.seconds)
