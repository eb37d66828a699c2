"""Reader side of ``/components``: ``open_results(p).components`` gives the decomposition back.

Importing this module registers :class:`ComponentsPart` for the ``components``
group (the store imports it lazily when a results file is opened).
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from mechdiff.store.reader import Part, register_part
from mechdiff.weightdecomp.spd.config import SPDConfig
from mechdiff.weightdecomp.spd.decomposition import Decomposition, ModuleComponents


class ComponentsPart(Part):
    """``/components`` of a results file: per-module U, V, statistics and the config."""

    @property
    def modules(self) -> list[str]:
        """Decomposed module names, in model order."""
        return list(self.attrs["modules"])

    def U(self, module: str) -> np.ndarray:
        """[C, d_out] output-side vectors of ``module``."""
        return np.asarray(self._module_group(module)["U"])

    def V(self, module: str) -> np.ndarray:
        """[d_in, C] input-side vectors of ``module``."""
        return np.asarray(self._module_group(module)["V"])

    def module_components(self, module: str) -> ModuleComponents:
        """One module's components with their statistics and causal-importance MLPs."""
        stats = self.table("components")
        rows = stats[stats["module"] == module]
        rows = rows[np.argsort(rows["index"])]
        group = self._module_group(module)
        ci = {key: np.asarray(group["ci"][key]) for key in group["ci"]} if "ci" in group else {}
        return ModuleComponents(
            name=module, kind=self.attrs["kinds"][module], V_IC=self.V(module), U_CO=self.U(module),
            alive_frequency_C=np.asarray(rows["alive_frequency"]), mean_ci_C=np.asarray(rows["mean_ci"]),
            ci_params=ci,
        )

    def decomposition(self) -> Decomposition:
        """The whole :class:`Decomposition` as it was written (history truncated to the stored rows)."""
        attrs = self.attrs
        return Decomposition(
            modules={m: self.module_components(m) for m in self.modules},
            config=SPDConfig.from_dict(attrs["config"]),
            output=attrs.get("output", "mse"),
            history=list(attrs.get("history", [])),
            model_dtype=attrs.get("model_dtype", "float32"),
        )

    def ranked_components(self) -> np.ndarray:
        """The components table, most important first (mean causal importance, then alive frequency)."""
        table = self.table("components")
        return table[np.lexsort((-table["alive_frequency"], -table["mean_ci"]))]

    def to_json(self, top: int | None = None) -> dict[str, Any]:
        """Per module its alive count, the toy's ground-truth metrics when it was a toy, the top components."""
        attrs = self.attrs
        alive = attrs.get("n_alive", {})
        counts = {}
        table = self.table("components")
        for module in self.modules:
            counts[module] = int(np.sum(table["module"] == module))
        modules = [{"module": m, "kind": attrs.get("kinds", {}).get(m), "n_components": counts[m],
                    "n_alive": alive.get(m)} for m in self.modules]
        rows = [{"module": str(r["module"]), "index": int(r["index"]), "mean_ci": float(r["mean_ci"]),
                 "alive_frequency": float(r["alive_frequency"]), "norm": float(r["norm"]), "alive": bool(r["alive"])}
                for r in self.ranked_components()[:top]]
        return {"modules": modules, "toy": attrs.get("toy"), "output": attrs.get("output"),
                "model_dtype": attrs.get("model_dtype", "float32"), "components": rows}

    def _module_group(self, module: str) -> h5py.Group:
        if module not in self.group:
            raise KeyError(f"/components has no module {module!r}; it has: {', '.join(self.modules)}")
        return self.group[module]


register_part("components", ComponentsPart)
