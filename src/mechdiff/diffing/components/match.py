"""Diffing with components: FT's delta in BASE's components, and matching two decompositions.

Two views of what a fine-tune did to one decomposed weight:

* :func:`delta_in_components` keeps BASE's rank-1 components fixed and fits W_ft
  as sum_c a_c u_c v_c^T + R. a_c - 1 says how much each existing mechanism was
  turned up or down; R (what no component explains) is a new mechanism.
* :func:`match_components` decomposes both and pairs components by |cos| of
  their flattened rank-1 matrices (Hungarian assignment), sorting them into
  matched / changed / new / gone.

Hidden-unit permutations leave a network's function unchanged but move its
weights; :func:`hidden_permutation` recovers one so both sides can be compared
in the same basis.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import linear_sum_assignment

from mechdiff.errors import InputError
from mechdiff.weightdecomp.spd.decomposition import Decomposition, ModuleComponents

CATEGORIES = ("matched", "changed", "new", "gone")


@dataclass(frozen=True)
class MatchThresholds:
    """When two components count as the same mechanism."""

    matched_cos: float = 0.95
    """|cos| of the flattened rank-1 matrices at or above which a pair is the same component..."""

    norm_tolerance: float = 0.2
    """...provided their norms differ by at most this relative amount (else: changed)."""

    changed_cos: float = 0.3
    """A pair with |cos| in [changed_cos, matched_cos) is one component, edited; below: unrelated."""

    min_frequency: float | None = None
    """Only components firing on at least this fraction of inputs take part (None: the decomposition's own)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.changed_cos <= self.matched_cos <= 1.0:
            raise InputError("match thresholds need 0 <= changed_cos <= matched_cos <= 1")
        if self.norm_tolerance < 0:
            raise InputError("norm_tolerance must be >= 0")


@dataclass(frozen=True)
class ComponentDelta:
    """W_ft of one module expressed in BASE's components."""

    module: str
    """Module name."""

    indices: np.ndarray
    """[K] base component indices used as the basis (the alive ones by default)."""

    coef_K: np.ndarray
    """[K] least-squares coefficient of each basis component in W_ft (1 = unchanged)."""

    residual_OI: np.ndarray
    """[d_out, d_in] W_ft minus its best fit by the basis: what no base component explains."""

    delta_norm: float
    """||W_ft - W_base||_F, with W_base the sum of the basis components (coefficients all 1)."""

    base_norm: float
    """||W_base||_F."""

    @property
    def coef_change_K(self) -> np.ndarray:
        """[K] a_c - 1: how much each base component was scaled by the fine-tune."""
        return self.coef_K - 1.0

    @property
    def residual_norm(self) -> float:
        return float(np.linalg.norm(self.residual_OI))

    @property
    def unexplained_fraction(self) -> float:
        """||R||^2 / ||W_ft - W_base||^2 (<= 1): the part of the change no base component explains."""
        return 0.0 if self.delta_norm == 0 else min(1.0, self.residual_norm**2 / self.delta_norm**2)

    def changed(self, tolerance: float = 0.05) -> np.ndarray:
        """Base component indices whose coefficient moved by more than ``tolerance``."""
        return self.indices[np.abs(self.coef_change_K) > tolerance]


def delta_in_components(base: ModuleComponents, W_ft_OI: np.ndarray, *, min_frequency: float | None = 1e-4,
                        ) -> ComponentDelta:
    """Fit FT's weight with BASE's rank-1 components: W_ft = sum_c a_c u_c v_c^T + R.

    Args:
        base: the BASE decomposition of this module.
        W_ft_OI: FT's weight as [d_out, d_in] (same orientation as the decomposition).
        min_frequency: use only components alive at this frequency (None: all).

    Returns:
        A :class:`ComponentDelta` with per-component coefficients and the residual.
    """
    W_ft_OI = np.asarray(W_ft_OI, dtype=np.float64)
    W_base_OI = base.weight().astype(np.float64)
    if W_ft_OI.shape != W_base_OI.shape:
        raise InputError(f"{base.name}: FT weight has shape {W_ft_OI.shape}, base components {W_base_OI.shape}")
    keep = np.ones(base.n_components, bool) if min_frequency is None else base.alive(min_frequency)
    indices = np.flatnonzero(keep)
    U_KO = base.U_CO[indices].astype(np.float64)
    V_IK = base.V_IC[:, indices].astype(np.float64)
    gram_KK = (U_KO @ U_KO.T) * (V_IK.T @ V_IK)  # <u_i v_i^T, u_j v_j^T>_F
    rhs_K = np.einsum("ko,oi,ik->k", U_KO, W_ft_OI, V_IK)
    coef_K = np.linalg.lstsq(gram_KK, rhs_K, rcond=1e-10)[0] if len(indices) else np.zeros(0)
    residual_OI = W_ft_OI - ((V_IK * coef_K) @ U_KO).T
    # Measure the change against the basis itself: dead components may carry
    # weight on inputs BASE never saw, which is not part of BASE's mechanisms.
    W_basis_OI = (V_IK @ U_KO).T
    return ComponentDelta(
        module=base.name, indices=indices, coef_K=coef_K, residual_OI=residual_OI,
        delta_norm=float(np.linalg.norm(W_ft_OI - W_basis_OI)), base_norm=float(np.linalg.norm(W_base_OI)),
    )


@dataclass(frozen=True)
class ComponentMatch:
    """One row of a matching: a pair, or a component with no counterpart."""

    module: str
    category: str
    """'matched', 'changed', 'new' (only in B) or 'gone' (only in A)."""
    index_a: int
    """Component index in A (-1 for 'new')."""
    index_b: int
    """Component index in B (-1 for 'gone')."""
    abs_cos: float
    """|cos| of the flattened rank-1 matrices (0 when unpaired)."""
    norm_ratio: float
    """||u_b v_b^T|| / ||u_a v_a^T|| (nan when unpaired)."""


@dataclass(frozen=True)
class Matching:
    """Components of decomposition A paired with those of B, module by module."""

    rows: tuple[ComponentMatch, ...]
    thresholds: MatchThresholds

    def of(self, category: str) -> list[ComponentMatch]:
        """The rows of one category."""
        if category not in CATEGORIES:
            raise ValueError(f"category must be one of {CATEGORIES}")
        return [r for r in self.rows if r.category == category]

    def counts(self) -> dict[str, int]:
        return {c: len(self.of(c)) for c in CATEGORIES}

    def to_table(self) -> dict[str, list]:
        """Columns for ``ResultsWriter.table`` (e.g. under ``components/matching``)."""
        fields = ("module", "category", "index_a", "index_b", "abs_cos", "norm_ratio")
        return {f: [getattr(r, f) for r in self.rows] for f in fields}


def component_abs_cos(a: ModuleComponents, b: ModuleComponents, idx_a: np.ndarray, idx_b: np.ndarray) -> np.ndarray:
    """[Ka, Kb] |cos| between flattened u v^T: |cos(u_a, u_b)| * |cos(v_a, v_b)|."""
    def unit(x: np.ndarray, axis: int) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-30)

    cos_u = unit(a.U_CO[idx_a], 1) @ unit(b.U_CO[idx_b], 1).T
    cos_v = unit(a.V_IC[:, idx_a], 0).T @ unit(b.V_IC[:, idx_b], 0)
    return np.abs(cos_u * cos_v)


def _match_module(a: ModuleComponents, b: ModuleComponents, thresholds: MatchThresholds,
                  min_frequency: float) -> list[ComponentMatch]:
    idx_a = np.flatnonzero(a.alive(min_frequency))
    idx_b = np.flatnonzero(b.alive(min_frequency))
    cos_AB = component_abs_cos(a, b, idx_a, idx_b)
    rows_a, rows_b = linear_sum_assignment(-cos_AB) if cos_AB.size else (np.zeros(0, int), np.zeros(0, int))
    rows: list[ComponentMatch] = []
    paired_a, paired_b = set(), set()
    for i, j in zip(rows_a, rows_b, strict=True):
        cos = float(cos_AB[i, j])
        if cos < thresholds.changed_cos:
            continue
        ca, cb = int(idx_a[i]), int(idx_b[j])
        ratio = float(b.norms_C[cb] / max(a.norms_C[ca], 1e-30))
        same = cos >= thresholds.matched_cos and abs(ratio - 1.0) <= thresholds.norm_tolerance
        rows.append(ComponentMatch(a.name, "matched" if same else "changed", ca, cb, cos, ratio))
        paired_a.add(ca)
        paired_b.add(cb)
    rows += [ComponentMatch(a.name, "gone", int(c), -1, 0.0, float("nan")) for c in idx_a if c not in paired_a]
    rows += [ComponentMatch(a.name, "new", -1, int(c), 0.0, float("nan")) for c in idx_b if c not in paired_b]
    return rows


def match_components(a: Decomposition, b: Decomposition, thresholds: MatchThresholds | None = None) -> Matching:
    """Pair the alive components of two decompositions of the same architecture.

    Per module, the Hungarian assignment (``scipy.optimize.linear_sum_assignment``)
    maximises the summed |cos| of flattened rank-1 matrices; a pair is
    'matched' when |cos| >= matched_cos and norms agree within norm_tolerance,
    'changed' when it is still above changed_cos; everything unpaired in B is
    'new' and in A is 'gone'.

    Args:
        a: decomposition of BASE.
        b: decomposition of FT (hidden units aligned to BASE if they may be permuted;
            see :func:`hidden_permutation`).
        thresholds: the category thresholds.

    Returns:
        A :class:`Matching` with one row per pair or unpaired component.
    """
    thresholds = thresholds or MatchThresholds()
    common = [name for name in a.modules if name in b.modules]
    if not common:
        raise InputError("the two decompositions share no module; decompose the same --modules in both")
    rows: list[ComponentMatch] = []
    for name in common:
        min_frequency = thresholds.min_frequency
        if min_frequency is None:
            min_frequency = a.config.alive_min_frequency
        rows += _match_module(a.modules[name], b.modules[name], thresholds, min_frequency)
    return Matching(tuple(rows), thresholds)


def hidden_permutation(W_in_a_HI: np.ndarray, W_in_b_HI: np.ndarray,
                       W_out_a_OH: np.ndarray | None = None, W_out_b_OH: np.ndarray | None = None) -> np.ndarray:
    """The permutation of B's hidden units that best matches A's (weight matching).

    Args:
        W_in_a_HI, W_in_b_HI: weights writing the hidden units, [hidden, d_in].
        W_out_a_OH, W_out_b_OH: weights reading them, [d_out, hidden] (optional).

    Returns:
        perm [hidden] such that ``W_in_b_HI[perm] ~ W_in_a_HI``.
    """
    score_HH = np.asarray(W_in_a_HI) @ np.asarray(W_in_b_HI).T
    if W_out_a_OH is not None and W_out_b_OH is not None:
        score_HH = score_HH + np.asarray(W_out_a_OH).T @ np.asarray(W_out_b_OH)
    _, perm = linear_sum_assignment(-score_HH)
    return perm


def permute_components(mod: ModuleComponents, *, out_perm: np.ndarray | None = None,
                       in_perm: np.ndarray | None = None) -> ModuleComponents:
    """Components re-expressed after permuting the module's output and/or input units.

    ``out_perm``/``in_perm`` come from :func:`hidden_permutation`: unit k of the
    result is unit ``perm[k]`` of ``mod``.
    """
    U_CO = mod.U_CO if out_perm is None else mod.U_CO[:, out_perm]
    V_IC = mod.V_IC if in_perm is None else mod.V_IC[in_perm, :]
    return replace(mod, U_CO=U_CO, V_IC=V_IC)
