"""Where to read activations in a model, and a hook that stops the forward pass right there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mechdiff.errors import InputError

if TYPE_CHECKING:
    from typing import Self

SITE_KINDS = ("resid", "mlp", "attn")
# where transformer families keep their block list (tried in order before a generic search)
_BLOCK_LISTS = ("transformer.h", "model.layers", "gpt_neox.layers", "model.decoder.layers", "transformer.layers", "layers", "h")
_CHILD_NAMES = {"mlp": ("mlp", "feed_forward", "ffn", "mlp_block"), "attn": ("attn", "self_attn", "attention", "self_attention")}


@dataclass(frozen=True)
class ActivationSite:
    """Which activation to read from each model."""

    layer: int | None = None
    """Block index L (0-based); 'resid' means the residual stream after block L."""
    kind: str = "resid"
    """'resid' (block output), 'mlp' (MLP output of block L) or 'attn' (attention output of block L)."""
    module: str | None = None
    """A dotted submodule name (``model.get_submodule``) whose output is read; overrides layer/kind."""

    def __post_init__(self) -> None:
        if self.module is None and self.layer is None:
            raise ValueError("ActivationSite needs a layer or a module name")
        if self.kind not in SITE_KINDS:
            raise ValueError(f"ActivationSite kind must be one of {SITE_KINDS}, got {self.kind!r}")
        if self.layer is not None and self.layer < 0:
            raise ValueError("ActivationSite layer must be >= 0")

    def describe(self) -> str:
        return self.module if self.module is not None else f"{self.kind}.{self.layer}"


class _StopForward(Exception):
    """Raised from the hook once the site's output is captured: later layers never run."""


def resolve_site(model: nn.Module, site: ActivationSite) -> nn.Module:
    """The submodule whose output is the site's activation.

    Raises:
        InputError: the module name does not exist or the layer is out of range.
    """
    if site.module is not None:
        try:
            return model.get_submodule(site.module)
        except AttributeError as exc:
            names = [n for n, _ in model.named_modules() if n][:12]
            raise InputError(f"model has no submodule {site.module!r}; some names it has: {', '.join(names)}") from exc
    blocks = find_blocks(model)
    if not 0 <= site.layer < len(blocks):
        raise InputError(f"layer {site.layer} is out of range: the model has {len(blocks)} layers (0..{len(blocks) - 1})")
    block = blocks[site.layer]
    if site.kind == "resid":
        return block
    for name in _CHILD_NAMES[site.kind]:
        if hasattr(block, name):
            return getattr(block, name)
    children = ", ".join(n for n, _ in block.named_children())
    raise InputError(f"cannot find the {site.kind} module of layer {site.layer} (children: {children}); pass a module name")


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks (known paths first, else the longest ModuleList)."""
    for path in _BLOCK_LISTS:
        try:
            candidate = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(candidate, nn.ModuleList) and len(candidate):
            return candidate
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise InputError("cannot find the model's layers (no nn.ModuleList); pass a module name for the site")
    return max(lists, key=len)


class SiteCapture:
    """Context manager: hook the site, keep its output, optionally stop the forward pass there."""

    def __init__(self, module: nn.Module, stop: bool = True) -> None:
        self.module, self.stop = module, stop
        self.output: torch.Tensor | None = None
        self._handle: Any = None

    def __enter__(self) -> Self:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        self.output = output[0] if isinstance(output, (tuple, list)) else output
        if self.stop:
            raise _StopForward

    def run(self, call: Callable[[], Any]) -> torch.Tensor:
        """Run the forward call and return the captured [b, T, D] activation."""
        self.output = None
        try:
            call()
        except _StopForward:
            pass
        if self.output is None:
            raise InputError("the activation site was never reached during the forward pass; check the layer/module")
        return self.output
