"""PEFT LoRA adapters applied over a base checkpoint: FT = BASE + scale * B @ A."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mechdiff.checkpoint.sources import (
    PickleFile,
    SafetensorsFile,
    TensorMeta,
    TensorSource,
)
from mechdiff.errors import InputError

_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(\.[^.]+)?(\.weight)?$")


@dataclass(frozen=True)
class AdapterConfig:
    """The fields of adapter_config.json that change the applied delta."""

    r: int
    lora_alpha: float
    use_rslora: bool
    fan_in_fan_out: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    layers_to_transform: tuple[int, ...] | None

    def alpha_for(self, module: str) -> float:
        return float(_pattern_value(self.alpha_pattern, module, self.lora_alpha))

    def rank_for(self, module: str) -> int:
        return int(_pattern_value(self.rank_pattern, module, self.r))

    def scale(self, module: str, rank: int) -> float:
        alpha = self.alpha_for(module)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    # PEFT matches each key as a suffix of the module name
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def read_adapter_config(folder: Path) -> AdapterConfig:
    """Parse and check adapter_config.json (LoRA only; DoRA is refused)."""
    path = folder / "adapter_config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"{folder} is not a PEFT adapter: adapter_config.json is missing") from exc
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not valid JSON") from exc
    if raw.get("peft_type", "LORA") != "LORA":
        raise InputError(f"{path}: peft_type {raw.get('peft_type')!r} is not supported (only LORA)")
    if raw.get("use_dora"):
        raise InputError(f"{path}: DoRA adapters are not supported yet; merge the adapter with PEFT first")
    layers = raw.get("layers_to_transform")
    if isinstance(layers, int):
        layers = [layers]
    return AdapterConfig(
        r=int(raw.get("r", 8)),
        lora_alpha=float(raw.get("lora_alpha", 8)),
        use_rslora=bool(raw.get("use_rslora", False)),
        fan_in_fan_out=bool(raw.get("fan_in_fan_out", False)),
        rank_pattern=dict(raw.get("rank_pattern") or {}),
        alpha_pattern=dict(raw.get("alpha_pattern") or {}),
        layers_to_transform=tuple(layers) if layers else None,
    )


class LoraSource:
    """A base checkpoint with a PEFT LoRA adapter applied on the fly, one tensor at a time.

    Args:
        base: the base model's tensors.
        adapter_dir: folder with adapter_config.json and adapter_model.safetensors (or .bin).
    """

    def __init__(self, base: TensorSource, adapter_dir: str | Path) -> None:
        self.base = base
        self.adapter_dir = Path(adapter_dir)
        self.label = f"{base.label} + {self.adapter_dir}"
        self.folder = base.folder
        self.config = base.config
        self.adapter_config = read_adapter_config(self.adapter_dir)
        self._weights = _open_adapter_weights(self.adapter_dir)
        self._lora: dict[str, dict[str, str]] = {}
        self._replaced: dict[str, str] = {}
        self._index_keys()
        self._target_of = {m: self._resolve_base_name(m) for m in self._lora}

    def _index_keys(self) -> None:
        for key in self._weights.names():
            if "lora_magnitude_vector" in key:
                raise InputError(f"{self.adapter_dir}: DoRA adapters are not supported yet")
            stripped = key.removeprefix(_PREFIX)
            match = _LORA_KEY.match(stripped)
            if match:
                self._lora.setdefault(match["module"], {})[match["part"]] = key
            else:
                # modules_to_save: the saved tensor replaces the base tensor of the same name
                self._replaced[self._resolve_base_name(stripped, is_full_name=True)] = key
        for module, parts in self._lora.items():
            if len(parts) != 2:
                raise InputError(f"{self.adapter_dir}: module {module} has {sorted(parts)} but needs both A and B")

    def _resolve_base_name(self, module: str, *, is_full_name: bool = False) -> str:
        wanted = module if is_full_name else module + ".weight"
        names = self.base.names()
        if wanted in names:
            return wanted
        candidates = [n for n in names if n.endswith("." + wanted) or wanted.endswith("." + n)]
        if len(candidates) == 1:
            return candidates[0]
        if is_full_name:
            return wanted  # a new tensor: reported as added
        raise InputError(f"adapter targets {module}, which the base model does not have (or has twice)")

    def names(self) -> list[str]:
        extra = [n for n in self._replaced if n not in set(self.base.names())]
        return self.base.names() + extra

    def meta(self, name: str) -> TensorMeta:
        if name in self._replaced:
            replaced = self._weights.meta(self._replaced[name])
            return TensorMeta(name, replaced.shape, replaced.dtype)
        meta = self.base.meta(name)
        return TensorMeta(name, meta.shape, "F32") if name in self._delta_modules() else meta

    def _delta_modules(self) -> dict[str, str]:
        return {target: module for module, target in self._target_of.items() if self._layer_allowed(module)}

    def _layer_allowed(self, module: str) -> bool:
        layers = self.adapter_config.layers_to_transform
        if layers is None:
            return True
        numbers = [int(tok) for tok in module.split(".") if tok.isdigit()]
        return bool(numbers) and numbers[0] in layers

    def get(self, name: str) -> torch.Tensor:
        if name in self._replaced:
            return self._weights.get(self._replaced[name])
        module = self._delta_modules().get(name)
        weight = self.base.get(name)
        if module is None:
            return weight
        delta = self.delta(module)
        if delta.shape != weight.shape:
            raise InputError(
                f"adapter delta for {module} has shape {list(delta.shape)} but the base weight is {list(weight.shape)} "
                "(wrong base model, or fan_in_fan_out set wrongly)"
            )
        return weight.float() + delta

    def modules(self) -> dict[str, str]:
        """Base tensor name -> adapter module, for every module this adapter changes."""
        return self._delta_modules()

    @property
    def replaced(self) -> list[str]:
        """Base tensors the adapter replaces whole (PEFT's modules_to_save)."""
        return sorted(self._replaced)

    def factors(self, module: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(A [r, in], B [out, r], scale) of ``module``: its update is scale * B @ A."""
        parts = self._lora[module]
        embedding = "lora_embedding_A" in parts
        a = self._weights.get(parts["lora_embedding_A" if embedding else "lora_A"]).float()
        b = self._weights.get(parts["lora_embedding_B" if embedding else "lora_B"]).float()
        return a, b, self.adapter_config.scale(module, a.shape[0])

    def delta(self, module: str) -> torch.Tensor:
        """The dense update this adapter adds to ``module``'s weight, in the weight's stored orientation."""
        parts = self._lora[module]
        embedding = "lora_embedding_A" in parts
        a, b, _ = self.factors(module)
        rank = a.shape[0]
        if rank != self.adapter_config.rank_for(module):
            raise InputError(
                f"adapter {module}: A has rank {rank} but adapter_config.json (r / rank_pattern) says "
                f"{self.adapter_config.rank_for(module)}"
            )
        if b.shape[1] != rank:
            raise InputError(f"adapter {module}: A has rank {rank} but B has {b.shape[1]} columns")
        delta = (b @ a) * self.adapter_config.scale(module, rank)
        if embedding or self.adapter_config.fan_in_fan_out:
            delta = delta.T  # embeddings are [vocab, dim]; Conv1D weights are stored [in, out]
        return delta.contiguous()

    def fingerprint(self) -> str:
        digest = hashlib.sha256((self.base.fingerprint() + self._weights.fingerprint()).encode())
        return digest.hexdigest()[:16]


def _open_adapter_weights(folder: Path) -> SafetensorsFile | PickleFile:
    st = folder / "adapter_model.safetensors"
    if st.is_file():
        return SafetensorsFile(st)
    pt = folder / "adapter_model.bin"
    if pt.is_file():
        return PickleFile(pt)
    raise InputError(f"{folder} has no adapter_model.safetensors (or adapter_model.bin)")
