"""LoRA adapters as forward hooks, saved in the PEFT file format (peft not required).

A LoRA on a weight W adds ``(alpha / r) * B @ A`` with A [r, in] and B [out, r].
GPT-2's Conv1D stores W as [in, out] (PEFT's ``fan_in_fan_out=True``); A and B
keep the nn.Linear orientation either way, as PEFT writes them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

# PEFT matches target_modules against the last component of a module's name.
LORA_TARGETS = {
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}


class LoRAHooks:
    """Rank-r adapters on every targeted linear layer of a model, applied by forward hooks.

    Args:
        model: the (frozen) model to adapt.
        arch: ``gpt2`` or ``llama``; picks the target modules and weight orientation.
        rank: r.
        alpha: scale numerator (update = alpha / r * B @ A).
        seed: initialisation seed for A (B starts at zero, so the adapter starts as a no-op).
    """

    def __init__(self, model: torch.nn.Module, arch: str, rank: int, alpha: float, seed: int) -> None:
        self.arch, self.rank, self.alpha = arch, rank, alpha
        self.fan_in_fan_out = arch == "gpt2"
        self.A: dict[str, torch.nn.Parameter] = {}
        self.B: dict[str, torch.nn.Parameter] = {}
        self._handles = []
        gen = torch.Generator().manual_seed(seed)
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1] in LORA_TARGETS[arch]:
                self._attach(name, module, gen)
        if not self.A:
            raise ValueError(f"no LoRA target modules {LORA_TARGETS[arch]} found in the model")

    @property
    def scale(self) -> float:
        """alpha / r."""
        return self.alpha / self.rank

    def _attach(self, name: str, module: torch.nn.Module, gen: torch.Generator) -> None:
        d_in, d_out = self._dims(module.weight)
        bound = 1.0 / math.sqrt(d_in)  # nn.Linear's default (kaiming-uniform, a=sqrt(5)), as PEFT uses
        A_RI = (torch.rand(self.rank, d_in, generator=gen) * 2 - 1) * bound
        self.A[name] = torch.nn.Parameter(A_RI)
        self.B[name] = torch.nn.Parameter(torch.zeros(d_out, self.rank))
        self._handles.append(module.register_forward_hook(self._hook(name)))

    def _dims(self, weight: torch.Tensor) -> tuple[int, int]:
        d0, d1 = weight.shape
        return (d0, d1) if self.fan_in_fan_out else (d1, d0)

    def _hook(self, name: str):
        def hook(module, inputs, output):
            x = inputs[0]
            return output + (x @ self.A[name].T @ self.B[name].T) * self.scale
        return hook

    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The trainable adapter tensors, named like their PEFT keys."""
        out = [(f"{n}.lora_A", p) for n, p in self.A.items()]
        return out + [(f"{n}.lora_B", p) for n, p in self.B.items()]

    def remove(self) -> None:
        """Detach the hooks; the model behaves as the base model again."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @torch.no_grad()
    def merge_into(self, model: torch.nn.Module) -> None:
        """Add every adapter update into the model's weights (call after :meth:`remove`)."""
        modules = dict(model.named_modules())
        for name in self.A:
            delta_OI = (self.B[name] @ self.A[name]) * self.scale
            weight = modules[name].weight
            weight += delta_OI.T if self.fan_in_fan_out else delta_OI

    def save(self, folder: Path, base_model_name_or_path: str) -> None:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` in PEFT's format."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name in self.A:
            tensors[f"base_model.model.{name}.lora_A.weight"] = self.A[name].detach().contiguous()
            tensors[f"base_model.model.{name}.lora_B.weight"] = self.B[name].detach().contiguous()
        save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        (folder / "adapter_config.json").write_text(json.dumps(self._config(base_model_name_or_path),
                                                               indent=2) + "\n")

    def _config(self, base_model_name_or_path: str) -> dict:
        return {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model_name_or_path,
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": 0.0,
            "target_modules": list(LORA_TARGETS[self.arch]),
            "fan_in_fan_out": self.fan_in_fan_out,
            "bias": "none",
            "modules_to_save": None,
            "init_lora_weights": True,
            "inference_mode": True,
            "use_rslora": False,
            "use_dora": False,
            "rank_pattern": {},
            "alpha_pattern": {},
        }
