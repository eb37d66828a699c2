"""Ground truth for SPD: train a toy model and its decomposition, score against known features."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mechdiff.errors import InputError
from mechdiff.training import Checkpointing
from mechdiff.weightdecomp.spd.config import SPDConfig
from mechdiff.weightdecomp.spd.decomposition import Decomposition, ModuleComponents
from mechdiff.weightdecomp.spd.trainer import decompose_module
from mechdiff.weightdecomp.toys.models import (
    ResidMLPTask,
    feature_batches,
    train_resid_mlp,
    train_tms,
)

TOYS = ("tms-5-2", "tms-5-2-id", "tms-40-10", "resid-mlp")

if TYPE_CHECKING:
    from mechdiff.store.protocol import PartWriter

# SPD settings per toy: the published coefficients (C, importance coefficient, p;
# Bushnaq et al. 2025) with batch 256 instead of 4096 and a 5x larger learning
# rate, so the toys converge in ~10x fewer examples on a CPU. Toy data is drawn
# conditioned on at least one active feature: an all-zero input has zero inner
# activations, so it teaches the reconstruction losses nothing.
AT_LEAST_ONE = True

TOY_CONFIGS: dict[str, SPDConfig] = {
    "tms-5-2": SPDConfig(n_components=20, importance_minimality_coeff=3e-3, pnorm=1.0,
                         steps=8000, batch_size=256, lr=5e-3, eval_batches=32),
    "tms-5-2-id": SPDConfig(n_components=20, importance_minimality_coeff=3e-3, pnorm=1.0,
                            steps=8000, batch_size=256, lr=5e-3, eval_batches=32),
    # batch 256 (~6-7 min on one core; batch 128 did worse). Alive components of
    # linear1/linear2, p = 2 throughout: one coefficient 1e-4 for both, seeds 0-2: 40/39,
    # 40/21, 40/17 (5e-5: 39/16, 41/12; 2e-4: 39/40, 39/37); linear2 x2, seeds 0-5: 41/40,
    # 40/37, 40/42, 40/40, 40/40, 40/39. Each matrix's fate is set in the first ~3000
    # steps: at a bad seed linear2 falls to ~32 used components, several shared by 20-35
    # features, and never recovers. Starting at p = 1 (a fractional importance costs more,
    # so shared components cannot linger) and annealing to the published p = 2 over the
    # first 30% fixed linear2 at every seed, but at seed 0 let linear1 merge features
    # (40 alive, MMCS 0.936); linear1 x1.5 fixed that (x0.5 merged more). With both,
    # seeds 0-7: 40/40 each, MMCS >= 0.99998, 367-416 s with two runs on the 2 cores
    # (the sweep: benchmarks/sweep_tms_seeds.py --toy tms-40-10 --seeds 0-7).
    "tms-40-10": SPDConfig(n_components=200, importance_minimality_coeff=1e-4, pnorm=2.0,
                           pnorm_start=1.0, pnorm_anneal_frac=0.3,
                           importance_module_scale={"linear1": 1.5, "linear2": 2.0},
                           steps=20000, batch_size=256, lr=5e-3, eval_batches=32),
    # the importance coefficient of the SPD repository's resid_mlp1 config (1e-3): at the
    # 1e-5 of the 2-3 layer configs, causal importances stayed dense (0 of 100 features
    # had a component of their own after 4000 steps; 100 of 100 at 1e-3 and 8000 steps)
    "resid-mlp": SPDConfig(n_components=100, importance_minimality_coeff=1e-3, pnorm=2.0,
                           steps=8000, batch_size=256, lr=5e-3, eval_batches=32),
}


def toy_config(name: str, **overrides: Any) -> SPDConfig:
    """The default SPD config of toy ``name`` with some fields replaced (e.g. ``steps``, ``n_components``).

    Args:
        name: one of :data:`TOYS`.
        overrides: SPDConfig fields; unknown names raise InputError.

    Returns:
        The validated config.
    """
    if name not in TOYS:
        raise InputError(f"unknown toy model {name!r}; choose one of {', '.join(TOYS)}")
    return SPDConfig.from_dict({**TOY_CONFIGS[name].to_dict(), **overrides})


def mmcs_ml2r(true_OF: np.ndarray, U_CO: np.ndarray, V_FC: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Mean max cosine similarity and mean L2 ratio against true feature columns.

    Column j of subcomponent c is u_c * v_c[j]; for each true column W[:, j]
    take the subcomponent whose column j has the highest cosine with it.

    Args:
        true_OF: [d_out, n_features] true feature columns.
        U_CO: [C, d_out] output-side vectors.
        V_FC: [n_features, C] input-side weights per feature.

    Returns:
        (MMCS, ML2R, [n_features] index of the best subcomponent per feature).
    """
    cols_FCO = V_FC[:, :, None] * U_CO[None, :, :]
    col_norm_FC = np.linalg.norm(cols_FCO, axis=-1)
    true_norm_F = np.linalg.norm(true_OF, axis=0)
    dots_FC = np.einsum("fco,of->fc", cols_FCO, true_OF)
    cos_FC = dots_FC / np.maximum(col_norm_FC * true_norm_F[:, None], 1e-12)
    best_F = cos_FC.argmax(axis=1)
    rows = np.arange(len(best_F))
    ratios = col_norm_FC[rows, best_F] / np.maximum(true_norm_F, 1e-12)
    return float(cos_FC[rows, best_F].mean()), float(ratios.mean()), best_F


def one_hot_ci(mod: ModuleComponents, inputs_FI: torch.Tensor) -> np.ndarray:
    """[n_features, C] causal importances of a module's components on each one-hot feature input."""
    return mod.causal_importance(inputs_FI).numpy()


def features_with_own_component(firing_FC: np.ndarray) -> int:
    """How many features make exactly one subcomponent fire, one that no other feature uses."""
    single_F = firing_FC.sum(axis=1) == 1
    winner_F = firing_FC.argmax(axis=1)
    users_C = firing_FC.sum(axis=0)
    return int((single_F & (users_C[winner_F] == 1)).sum())


@dataclass
class ToyReport:
    """What ``mechdiff decompose --toy NAME`` reports."""

    name: str
    """Toy model name."""
    mmcs: float
    """Mean max cosine similarity of the feature-reading matrix's components with the true feature columns."""
    ml2r: float
    """Mean L2 ratio of those best-matching component columns to the true columns."""
    n_alive: int
    """Alive subcomponents of the feature-reading matrix (linear1 / mlp_in)."""
    n_alive_per_module: dict[str, int]
    """Alive subcomponents per decomposed module."""
    n_components: int
    """C per module."""
    features_one_component: int
    """Features whose one-hot input makes exactly one component fire, one no other feature uses."""
    n_features: int
    """True features of the toy."""
    ci_pattern: list[list[float]]
    """[n_features][C] causal importances of the feature-reading matrix's components on one-hot inputs."""
    steps: int
    """SPD steps."""
    seconds: float
    """Wall time of the decomposition."""
    cpu_seconds: float
    """CPU time of the decomposition (single-threaded: what it takes on an idle core)."""
    steps_per_s: float
    """steps / seconds."""
    target_seconds: float
    """Wall time spent training the toy model itself."""
    targets: dict[str, bool]
    """The issue's targets for this toy and whether each was met."""
    decomposition: Decomposition = field(repr=False)
    """The decomposition (not part of the JSON)."""

    @property
    def targets_met(self) -> bool:
        return all(self.targets.values())

    def write(self, writer: PartWriter) -> None:
        """The decomposition under ``/components`` plus this report's metrics as its ``toy`` attribute."""
        self.decomposition.write(writer)
        metrics = {k: v for k, v in self.to_json().items() if k not in ("config", "ci_pattern")}
        writer.attrs("components", {"toy": metrics})

    def to_json(self) -> dict[str, Any]:
        """Everything but the decomposition, as JSON-ready values."""
        out = {k: v for k, v in self.__dict__.items() if k != "decomposition"}
        out["targets_met"] = self.targets_met
        out["config"] = self.decomposition.config.to_dict()
        return out


@dataclass(frozen=True)
class _ToySetup:
    model: torch.nn.Module
    globs: list[str]
    primary: str
    true_OF: np.ndarray
    feature_inputs_FI: torch.Tensor
    inputs_for_primary_FI: torch.Tensor
    probability: float
    low: float
    n_features: int


def _setup(name: str, seed: int) -> _ToySetup:
    if name.startswith("tms"):
        n_features, n_hidden = (40, 10) if name == "tms-40-10" else (5, 2)
        identity = name.endswith("-id")
        model = train_tms(n_features, n_hidden, identity_hidden=identity, seed=seed,
                          steps=6000 if n_features > 5 else 3000)
        globs = ["linear1", "linear2"] + (["hidden"] if identity else [])
        eye = torch.eye(n_features)
        W = model.linear1.weight.detach().numpy()
        return _ToySetup(model, globs, "linear1", W, eye, eye, 0.05, 0.0, n_features)
    task = ResidMLPTask()
    model, _ = train_resid_mlp(task, seed=seed)
    W_E = model.W_E_FD
    true_OF = (model.mlp_in.weight @ W_E.T).detach().numpy()
    eye = torch.eye(task.n_features)
    return _ToySetup(model, ["mlp_in", "mlp_out"], "mlp_in", true_OF, eye, eye @ W_E,
                     task.probability, -1.0, task.n_features)


def run_toy(name: str, config: SPDConfig | None = None, *, seed: int = 0, progress: bool = True,
            checkpointing: Checkpointing | None = None, device: str = "cpu") -> ToyReport:
    """Train a toy model with known features and its SPD decomposition; score it.

    Args:
        name: 'tms-5-2', 'tms-5-2-id', 'tms-40-10' or 'resid-mlp'.
        config: SPD config (default: ``TOY_CONFIGS[name]`` with ``seed``).
        seed: seed for the toy model, its data and (when config is None) the decomposition.
        progress: show a progress bar on stderr.
        checkpointing: save / resume long runs.
        device: where the decomposition trains (the toy model itself trains on the CPU, then moves there).

    Returns:
        A :class:`ToyReport` with MMCS, ML2R, alive counts, the one-hot
        causal-importance pattern, timings and which targets were met.
    """
    if name not in TOYS:
        raise InputError(f"unknown toy model {name!r}; choose one of {', '.join(TOYS)}")
    config = config or replace(TOY_CONFIGS[name], seed=seed)
    with _torch_threads(1):
        return _run_toy(name, config, seed, progress, checkpointing, device)


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Toy tensors are tiny: one thread avoids the intra-op sync that dominates on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_toy(name: str, config: SPDConfig, seed: int, progress: bool,
             checkpointing: Checkpointing | None = None, device: str = "cpu") -> ToyReport:
    t0 = time.perf_counter()
    setup = _setup(name, seed)
    target_seconds = time.perf_counter() - t0
    t1, cpu1 = time.perf_counter(), time.process_time()
    decomp = decompose_tms_like(setup.model, setup.globs, setup.n_features, config, seed=seed,
                                probability=setup.probability, low=setup.low, progress=progress,
                                checkpointing=checkpointing, device=device)
    seconds, cpu_seconds = time.perf_counter() - t1, time.process_time() - cpu1
    return _score(name, setup, decomp, seconds, cpu_seconds, target_seconds)


def decompose_tms_like(
    model: torch.nn.Module, module_globs: list[str], n_features: int, config: SPDConfig, *,
    seed: int = 0, probability: float = 0.05, low: float = 0.0, progress: bool = False,
    checkpointing: Checkpointing | None = None, device: str | None = None,
) -> Decomposition:
    """SPD of a toy model fed sparse features (MSE output distance), single-threaded.

    Args:
        model: a model taking [batch, n_features] sparse feature vectors.
        module_globs: weights to decompose.
        n_features: input width.
        config: SPD config (``batch_size`` examples per step).
        seed: data seed (the data stream uses ``seed + 1``).
        probability: feature firing probability.
        low: feature values ~ U(low, 1).
        progress: show a progress bar on stderr.
        checkpointing: save / resume long runs.
        device: where the decomposition trains (None: where the model is).

    Returns:
        The :class:`Decomposition`.
    """
    data = feature_batches(config.batch_size, n_features, probability, seed + 1, low, at_least_one=AT_LEAST_ONE)
    with _torch_threads(1):
        return decompose_module(model, module_globs, data, config, "mse", progress=progress,
                                checkpointing=checkpointing, device=device)


def _score(name: str, setup: _ToySetup, decomp: Decomposition, seconds: float, cpu_seconds: float,
           target_seconds: float) -> ToyReport:
    primary = decomp.modules[setup.primary]
    V_FC = setup.inputs_for_primary_FI.numpy() @ primary.V_IC
    mmcs, ml2r, _ = mmcs_ml2r(setup.true_OF, primary.U_CO, V_FC)
    ci_FC = one_hot_ci(primary, setup.inputs_for_primary_FI)
    one_each = features_with_own_component(ci_FC > decomp.config.alive_threshold)
    n_alive = decomp.n_alive()
    steps = decomp.config.steps
    report = ToyReport(
        name=name, mmcs=mmcs, ml2r=ml2r, n_alive=n_alive[setup.primary], n_alive_per_module=n_alive,
        n_components=decomp.config.n_components, features_one_component=one_each,
        n_features=setup.n_features, ci_pattern=np.round(ci_FC, 3).tolist(), steps=steps,
        seconds=seconds, cpu_seconds=cpu_seconds, steps_per_s=steps / seconds, target_seconds=target_seconds,
        targets={}, decomposition=decomp,
    )
    report.targets = _targets(name, report, setup)
    return report


def _targets(name: str, report: ToyReport, setup: _ToySetup) -> dict[str, bool]:
    if name == "resid-mlp":
        return {"one_input_component_per_feature": report.features_one_component == setup.n_features}
    targets = {
        "mmcs>=0.99": report.mmcs >= 0.99,
        # Both the embedding and the read-out matrix hold one component per feature.
        f"n_alive=={setup.n_features}": all(report.n_alive_per_module[m] == setup.n_features
                                            for m in ("linear1", "linear2")),
    }
    if name != "tms-40-10":
        targets["0.95<=ml2r<=1.05"] = 0.95 <= report.ml2r <= 1.05
    if name.endswith("-id"):
        n_hidden = setup.true_OF.shape[0]
        targets[f"hidden_alive=={n_hidden}"] = report.n_alive_per_module["hidden"] == n_hidden
    return targets
