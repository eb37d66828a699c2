"""A LoRA fine-tune run as one model: the base with its adapter switched on and off.

The adapter's low-rank update is added to each target module's output by a forward hook
(x A^T B^T * scale) while the toggle is on, so BASE and FT share one copy of the weights
in memory. Two views of the one model stand in for the base and the fine-tune in lenses
that call the models one after the other (the behaviour lens). Lenses that hook the same
submodules of both models at once (crosscoder, components) cannot share one model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from mechdiff.checkpoint.peft import LoraSource
from mechdiff.errors import InputError


class AdapterToggle:
    """Forward hooks that add a PEFT LoRA adapter's update to a loaded model while enabled."""

    def __init__(self, model: nn.Module, adapter: LoraSource) -> None:
        self.model = model
        self.enabled = False
        self._handles = []
        if adapter.replaced:
            raise InputError(f"the adapter replaces whole tensors ({', '.join(adapter.replaced[:3])}); "
                             "run it as a merged model folder instead")
        for tensor, module_name in adapter.modules().items():
            a, b, scale = adapter.factors(module_name)
            if module_name.split(".")[-1] in ("embed_tokens", "wte", "word_embeddings") or a.shape[1] == 0:
                raise InputError(f"adapter module {module_name}: embedding adapters cannot be toggled yet")
            target = _submodule(model, tensor.removesuffix(".weight"))
            param = next(target.parameters())
            a, b = a.to(param.device, param.dtype), (b * scale).to(param.device, param.dtype)
            self._handles.append(target.register_forward_hook(self._hook(a, b)))

    def _hook(self, a: torch.Tensor, b: torch.Tensor) -> Any:
        def add_update(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if not self.enabled:
                return None
            return output + (inputs[0] @ a.T) @ b.T

        return add_update

    @contextlib.contextmanager
    def state(self, enabled: bool) -> Iterator[None]:
        """Run a block with the adapter on (FT) or off (BASE)."""
        before, self.enabled = self.enabled, enabled
        try:
            yield
        finally:
            self.enabled = before

    def views(self) -> tuple[AdapterView, AdapterView]:
        """(base, ft): callables that run the one model with the adapter off / on."""
        return AdapterView(self, False), AdapterView(self, True)

    def remove(self) -> None:
        """Take the hooks off (the model is the base model again)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class AdapterView:
    """The shared model seen as BASE (adapter off) or FT (adapter on); attributes pass through."""

    def __init__(self, toggle: AdapterToggle, enabled: bool) -> None:
        self._toggle, self._enabled = toggle, enabled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._toggle.state(self._enabled):
            return self._toggle.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._toggle.model, name)


def _submodule(model: nn.Module, name: str) -> nn.Module:
    """The module a checkpoint tensor belongs to, with or without the task model's prefix."""
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    matches = [m for key, m in modules.items() if key.endswith("." + name) or name.endswith("." + key) and key]
    if len(matches) != 1:
        raise InputError(f"the adapter targets {name}, which the loaded model does not have (or has twice)")
    if not isinstance(matches[0], nn.Linear) and not hasattr(matches[0], "weight"):
        raise InputError(f"the adapter targets {name}, which is not a layer with a weight")
    return matches[0]
