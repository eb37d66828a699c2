"""Component-level diffs on hand-built ground-truth decompositions."""

import math

import numpy as np
import pytest

from mechdiff.diffing.components.match import (
    MatchThresholds,
    component_abs_cos,
    delta_in_components,
    hidden_permutation,
    match_components,
    permute_components,
)
from mechdiff.errors import InputError
from mechdiff.weightdecomp.spd.config import SPDConfig
from mechdiff.weightdecomp.spd.decomposition import Decomposition, ModuleComponents


def _module(name: str, U_CO: np.ndarray, V_IC: np.ndarray, alive_C: np.ndarray) -> ModuleComponents:
    freq = np.where(alive_C, 0.05, 0.0)
    return ModuleComponents(name, "linear", V_IC.astype(float), U_CO.astype(float), freq, freq)


def _tms_columns(used: list[int], rotate: float = 0.0) -> np.ndarray:
    """[2, 5] pentagon feature columns; features not in ``used`` are zero; feature 0 rotated by ``rotate``."""
    angles = 2 * np.pi * np.arange(5) / 5
    angles[0] += rotate
    W = np.stack([np.cos(angles), np.sin(angles)])
    W[:, [j for j in range(5) if j not in used]] = 0.0
    return W


def _tms_decomposition(W_HF: np.ndarray, n_components: int = 8) -> Decomposition:
    """Ground-truth SPD of TMS: linear1 component j = W[:, j] e_j^T, linear2 component j = e_j W[:, j]^T."""
    n_hidden, n_features = W_HF.shape
    alive = np.zeros(n_components, bool)
    alive[:n_features] = np.linalg.norm(W_HF, axis=0) > 0
    pad = np.zeros((n_components - n_features,))
    U1 = np.concatenate([W_HF.T, np.zeros((n_components - n_features, n_hidden))])
    V1 = np.concatenate([np.eye(n_features), np.zeros((n_features, n_components - n_features))], axis=1)
    U2 = np.concatenate([np.eye(n_features), np.zeros((n_components - n_features, n_features))])
    V2 = np.concatenate([W_HF, np.zeros((n_hidden, len(pad)))], axis=1)
    mods = {"linear1": _module("linear1", U1, V1, alive), "linear2": _module("linear2", U2, V2, alive)}
    return Decomposition(mods, SPDConfig(n_components=n_components))


def test_delta_in_components_by_hand():
    # W_base = [[1,0,0],[0,1,0]] = e0 e0^T + e1 e1^T; W_ft doubles the first and adds 0.5 at (1,2):
    # coefficients (2, 1), residual [[0,0,0],[0,0,0.5]], ||D||^2 = 1 + 0.25 -> unexplained 0.25/1.25.
    base = _module("m", np.eye(2), np.eye(3)[:, :2], np.array([True, True]))
    W_ft = np.array([[2.0, 0, 0], [0, 1, 0.5]])
    delta = delta_in_components(base, W_ft)
    np.testing.assert_allclose(delta.coef_K, [2.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(delta.coef_change_K, [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(delta.residual_OI, [[0, 0, 0], [0, 0, 0.5]], atol=1e-12)
    assert delta.unexplained_fraction == pytest.approx(0.2)
    assert delta.changed().tolist() == [0]


def test_delta_in_components_rejects_wrong_shape():
    base = _module("m", np.eye(2), np.eye(3)[:, :2], np.array([True, True]))
    with pytest.raises(InputError, match="shape"):
        delta_in_components(base, np.zeros((3, 2)))


def test_delta_of_rotated_and_new_feature_in_base_components():
    base = _tms_decomposition(_tms_columns([0, 1, 2, 3]))
    W_ft = _tms_columns([0, 1, 2, 3, 4], rotate=math.radians(40))
    delta = delta_in_components(base.modules["linear1"], W_ft)
    # Untouched features keep coefficient 1; the rotated one keeps only its projection cos(40 deg).
    np.testing.assert_allclose(delta.coef_K, [math.cos(math.radians(40)), 1, 1, 1], atol=1e-9)
    assert delta.changed().tolist() == [0]
    # The residual holds feature 4 (a new mechanism) and the rotated-away part of feature 0.
    np.testing.assert_allclose(delta.residual_OI[:, 4], W_ft[:, 4], atol=1e-9)
    assert 0.5 < delta.unexplained_fraction < 1.0


def test_match_reports_rotated_feature_changed_and_unused_feature_new():
    base = _tms_decomposition(_tms_columns([0, 1, 2, 3]))
    ft = _tms_decomposition(_tms_columns([0, 1, 2, 3, 4], rotate=math.radians(40)))
    matching = match_components(base, ft)
    for module in ("linear1", "linear2"):
        rows = [r for r in matching.rows if r.module == module]
        changed = [r for r in rows if r.category == "changed"]
        new = [r for r in rows if r.category == "new"]
        matched = [r for r in rows if r.category == "matched"]
        assert [(r.index_a, r.index_b) for r in changed] == [(0, 0)]
        assert changed[0].abs_cos == pytest.approx(math.cos(math.radians(40)))
        assert [r.index_b for r in new] == [4]
        assert sorted(r.index_a for r in matched) == [1, 2, 3]
        assert all(r.abs_cos >= 0.99 for r in matched)
        assert not [r for r in rows if r.category == "gone"]
    assert matching.counts() == {"matched": 6, "changed": 2, "new": 2, "gone": 0}


def test_match_is_invariant_to_component_order_and_sign():
    base = _tms_decomposition(_tms_columns([0, 1, 2, 3, 4]))
    mod = base.modules["linear1"]
    order = np.array([3, 0, 4, 1, 2, 5, 6, 7])
    flipped = ModuleComponents("linear1", "linear", -mod.V_IC[:, order], mod.U_CO[order],
                               mod.alive_frequency_C[order], mod.mean_ci_C[order])
    other = Decomposition({"linear1": flipped}, base.config)
    matching = match_components(Decomposition({"linear1": mod}, base.config), other)
    assert matching.counts() == {"matched": 5, "changed": 0, "new": 0, "gone": 0}
    assert {(r.index_a, r.index_b) for r in matching.rows} == {(0, 1), (1, 3), (2, 4), (3, 0), (4, 2)}


def test_scaled_component_is_changed_not_matched():
    base = _tms_decomposition(_tms_columns([0, 1, 2, 3, 4]))
    W_ft = _tms_columns([0, 1, 2, 3, 4])
    W_ft[:, 2] *= 1.5
    matching = match_components(base, _tms_decomposition(W_ft), MatchThresholds(norm_tolerance=0.2))
    changed = matching.of("changed")
    assert {(r.module, r.index_a) for r in changed} == {("linear1", 2), ("linear2", 2)}
    assert changed[0].norm_ratio == pytest.approx(1.5)


def test_hidden_permutation_alone_reports_nothing_changed():
    rng = np.random.default_rng(0)
    W_HF = rng.normal(size=(6, 5))  # 6 hidden units, so the permutation is far from trivial
    perm_true = np.array([4, 2, 5, 0, 1, 3])
    W_ft_HF = W_HF[perm_true]
    # ft's hidden unit k is base's unit perm_true[k]; recover the inverse mapping from weights alone.
    perm = hidden_permutation(W_HF, W_ft_HF, W_HF.T, W_ft_HF.T)
    np.testing.assert_array_equal(W_ft_HF[perm], W_HF)
    base = _tms_decomposition(W_HF, n_components=8)
    ft = _tms_decomposition(W_ft_HF, n_components=8)
    unaligned = match_components(base, ft)
    assert unaligned.counts()["matched"] < 10
    aligned = Decomposition({
        "linear1": permute_components(ft.modules["linear1"], out_perm=perm),
        "linear2": permute_components(ft.modules["linear2"], in_perm=perm),
    }, ft.config)
    matching = match_components(base, aligned)
    assert matching.counts() == {"matched": 10, "changed": 0, "new": 0, "gone": 0}
    delta = delta_in_components(base.modules["linear1"], W_ft_HF[perm])
    np.testing.assert_allclose(delta.coef_change_K, 0.0, atol=1e-9)
    assert delta.unexplained_fraction == pytest.approx(0.0, abs=1e-12)


def test_component_abs_cos_by_hand():
    # u_a = (1, 0), v_a = (1, 1)/..; u_b = (1, 1), v_b = (1, 0): |cos u| = 1/sqrt2, |cos v| = 1/sqrt2 -> 0.5
    a = _module("m", np.array([[1.0, 0.0]]), np.array([[1.0], [1.0]]), np.array([True]))
    b = _module("m", np.array([[1.0, 1.0]]), np.array([[1.0], [0.0]]), np.array([True]))
    assert component_abs_cos(a, b, np.array([0]), np.array([0]))[0, 0] == pytest.approx(0.5)


def test_thresholds_validate_and_table_columns():
    with pytest.raises(InputError):
        MatchThresholds(matched_cos=0.5, changed_cos=0.8)
    base = _tms_decomposition(_tms_columns([0, 1]))
    table = match_components(base, base).to_table()
    assert table["category"] == ["matched"] * 4
    assert len(table["abs_cos"]) == 4
