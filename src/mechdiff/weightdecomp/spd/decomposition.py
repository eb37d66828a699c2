"""The SPD artifact: per-module rank-1 components and their statistics (no training code)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mechdiff.weightdecomp.spd.ci import CIBank, hard_sigmoid
from mechdiff.weightdecomp.spd.config import SPDConfig

if TYPE_CHECKING:
    from mechdiff.store.protocol import PartWriter

GROUP = "components"


@dataclass
class ModuleComponents:
    """The C rank-1 subcomponents of one weight matrix W [d_out, d_in] = V_IC @ U_CO transposed."""

    name: str
    """Module name in the decomposed model."""

    kind: str
    """'linear', 'conv1d' or 'embedding'."""

    V_IC: np.ndarray
    """[d_in, C] input-side vectors v_c."""

    U_CO: np.ndarray
    """[C, d_out] output-side vectors u_c."""

    alive_frequency_C: np.ndarray
    """[C] fraction of evaluation inputs on which g_c > alive_threshold."""

    mean_ci_C: np.ndarray
    """[C] mean causal importance over the evaluation inputs."""

    ci_params: dict[str, np.ndarray] = field(default_factory=dict)
    """The causal-importance MLP parameters (w_in_CH, b_in_CH, w_out_CH, b_out_C)."""

    @property
    def n_components(self) -> int:
        return int(self.V_IC.shape[1])

    @property
    def norms_C(self) -> np.ndarray:
        """[C] Frobenius norm of each rank-1 matrix u_c v_c^T (= |u_c| |v_c|)."""
        return np.linalg.norm(self.U_CO, axis=1) * np.linalg.norm(self.V_IC, axis=0)

    def weight(self) -> np.ndarray:
        """sum_c u_c v_c^T as [d_out, d_in]."""
        return (self.V_IC @ self.U_CO).T

    def component_matrices(self) -> np.ndarray:
        """[C, d_out, d_in] the rank-1 matrices u_c v_c^T."""
        return np.einsum("co,ic->coi", self.U_CO, self.V_IC)

    def alive(self, min_frequency: float) -> np.ndarray:
        """[C] bool: fires on at least ``min_frequency`` of the evaluation inputs."""
        return (self.alive_frequency_C >= min_frequency) & (self.alive_frequency_C > 0)

    def causal_importance(self, inputs: torch.Tensor) -> torch.Tensor:
        """g_c for inputs to this module ([..., d_in], token ids for embeddings) -> [..., C]."""
        bank = CIBank(self.n_components, self.ci_params["w_in_CH"].shape[1])
        bank.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in self.ci_params.items()})
        V = torch.from_numpy(self.V_IC)
        with torch.no_grad():
            inner = torch.nn.functional.embedding(inputs, V) if self.kind == "embedding" else inputs.float() @ V
            return hard_sigmoid(bank(inner))


@dataclass
class Decomposition:
    """A stochastic parameter decomposition of some modules of one model."""

    modules: dict[str, ModuleComponents]
    """Module name -> its components, in model order."""

    config: SPDConfig
    """The config it was trained with."""

    output: str = "mse"
    """Output distance used: 'mse' or 'kl'."""

    history: list[dict[str, float]] = field(default_factory=list)
    """Loss values logged during training (step, total and each term)."""

    model_dtype: str = "float32"
    """dtype the decomposed model ran in (the components themselves are float32)."""

    def n_alive(self) -> dict[str, int]:
        """Module name -> number of alive subcomponents (config.alive_min_frequency)."""
        return {n: int(m.alive(self.config.alive_min_frequency).sum()) for n, m in self.modules.items()}

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary: per module its shape, kind and alive count, plus the final losses."""
        modules = [
            {"module": n, "kind": m.kind, "d_in": int(m.V_IC.shape[0]), "d_out": int(m.U_CO.shape[1]),
             "n_components": m.n_components, "n_alive": int(m.alive(self.config.alive_min_frequency).sum())}
            for n, m in self.modules.items()
        ]
        return {"output": self.output, "model_dtype": self.model_dtype, "modules": modules,
                "final_losses": self.history[-1] if self.history else {}, "config": self.config.to_dict()}

    def write(self, writer: PartWriter) -> None:
        """Write everything under ``/components`` of an open ``ResultsWriter``.

        Layout: table ``/components/components`` (one row per subcomponent:
        module, index, alive_frequency, mean_ci, norm, alive), and per module
        ``/components/<module>/U`` [C, d_out], ``V`` [d_in, C] and the
        causal-importance MLP parameters; the config and module list are attributes.
        """
        rows: dict[str, list[Any]] = {k: [] for k in ("module", "index", "alive_frequency", "mean_ci", "norm", "alive")}
        for name, mod in self.modules.items():
            alive = mod.alive(self.config.alive_min_frequency)
            for c in range(mod.n_components):
                rows["module"].append(name)
                rows["index"].append(c)
                rows["alive_frequency"].append(float(mod.alive_frequency_C[c]))
                rows["mean_ci"].append(float(mod.mean_ci_C[c]))
                rows["norm"].append(float(mod.norms_C[c]))
                rows["alive"].append(bool(alive[c]))
            writer.array(f"{GROUP}/{name}/U", mod.U_CO.astype(np.float32))
            writer.array(f"{GROUP}/{name}/V", mod.V_IC.astype(np.float32))
            for key, value in mod.ci_params.items():
                writer.array(f"{GROUP}/{name}/ci/{key}", np.asarray(value, dtype=np.float32))
        writer.table(f"{GROUP}/components", {k: np.asarray(v) if k != "module" else v for k, v in rows.items()})
        writer.attrs(GROUP, {
            "config": self.config.to_dict(),
            "output": self.output,
            "model_dtype": self.model_dtype,
            "modules": list(self.modules),
            "kinds": {n: m.kind for n, m in self.modules.items()},
            "n_alive": self.n_alive(),
            "history": self.history[-50:],
        })
