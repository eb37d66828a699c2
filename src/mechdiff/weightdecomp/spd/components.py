"""Rank-1 subcomponents of one weight matrix and the hooks that put them in a model."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mechdiff.errors import InputError
from mechdiff.weightdecomp.spd.ci import CIBank

KINDS = ("linear", "conv1d", "embedding")


def module_kind(module: nn.Module) -> str | None:
    """'linear', 'conv1d' (GPT-2 style, weight [in, out]), 'embedding', or None."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return "conv1d"
    return None


def weight_out_in(module: nn.Module, kind: str) -> Tensor:
    """The module's weight as the [d_out, d_in] matrix it applies (a copy-free view).

    An embedding is the linear map of a one-hot token, so its [vocab, d] table
    is read as a [d, vocab] matrix.
    """
    if kind == "linear":
        return module.weight
    return module.weight.T


def find_targets(model: nn.Module, module_globs: list[str]) -> dict[str, nn.Module]:
    """The decomposable modules whose names match any of ``module_globs``.

    Args:
        model: any torch module.
        module_globs: fnmatch patterns on ``model.named_modules()`` names.

    Returns:
        name -> module, in model order.
    """
    if not module_globs:
        raise InputError("no modules to decompose; pass at least one --modules glob")
    found: dict[str, nn.Module] = {}
    for glob in module_globs:
        matched = [(n, m) for n, m in model.named_modules() if n and fnmatch.fnmatchcase(n, glob)]
        usable = [(n, m) for n, m in matched if module_kind(m) is not None]
        if not usable:
            hint = "matched only unsupported module types" if matched else "matched no module"
            raise InputError(
                f"module glob {glob!r} {hint}; SPD decomposes nn.Linear, GPT-2 Conv1D and "
                f"nn.Embedding (e.g. 'transformer.h.*.mlp.c_fc')"
            )
        found.update(usable)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return dict(sorted(found.items(), key=lambda item: order[item[0]]))


class ComponentLayer(nn.Module):
    """C rank-1 subcomponents u_c v_c^T of one weight plus their causal-importance MLPs.

    Args:
        kind: 'linear', 'conv1d' or 'embedding'.
        weight_OI: the target weight as [d_out, d_in].
        bias_O: the target bias (kept frozen) or None.
        n_components: C.
        ci_hidden: hidden width of each causal-importance MLP.
        generator: torch generator for the initialisation; the parameters are made on its device.
    """

    def __init__(
        self,
        kind: str,
        weight_OI: Tensor,
        bias_O: Tensor | None,
        n_components: int,
        ci_hidden: int,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        assert kind in KINDS, kind
        self.kind = kind
        d_out, d_in = weight_OI.shape
        # Balanced init: both factors get the same scale and sum_c u_c v_c^T
        # starts at the magnitude of W, so faithfulness is O(1) from step 0.
        w_rms = float(weight_OI.detach().float().pow(2).mean().sqrt()) or 1.0
        std = math.sqrt(w_rms / math.sqrt(n_components))
        device = generator.device if generator is not None else weight_OI.device
        self.V_IC = nn.Parameter(torch.randn(d_in, n_components, generator=generator, device=device) * std)
        self.U_CO = nn.Parameter(torch.randn(n_components, d_out, generator=generator, device=device) * std)
        self.ci = CIBank(n_components, ci_hidden, generator=generator)
        # the components train in float32 whatever dtype the model runs in: bf16's 8-bit mantissa
        # rounds away Adam steps of lr 1e-3 on entries of order 1
        frozen_bias = None if bias_O is None else bias_O.detach().to(device=device, dtype=torch.float32, copy=True)
        self.register_buffer("bias_O", frozen_bias)

    def inner(self, x: Tensor) -> Tensor:
        """Inner activations v_c^T a: [..., d_in] (token ids for embeddings) -> [..., C]."""
        if self.kind == "embedding":
            return F.embedding(x, self.V_IC)
        return x.to(self.V_IC.dtype) @ self.V_IC

    def masked_output(self, x: Tensor, mask: Tensor) -> Tensor:
        """The layer's output with subcomponent c scaled by mask[..., c]."""
        out = (self.inner(x) * mask) @ self.U_CO
        return out if self.bias_O is None else out + self.bias_O

    def weight_OI(self) -> Tensor:
        """sum_c u_c v_c^T as [d_out, d_in]."""
        return (self.V_IC @ self.U_CO).T


ForwardFn = Callable[[nn.Module, Any], Tensor]


def default_forward(model: nn.Module, batch: Any) -> Tensor:
    """Call the model on a batch; dict batches are keyword arguments; return logits/first output."""
    out = model(**batch) if isinstance(batch, dict) else model(batch)
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


class ComponentHooks:
    """Forward hooks that cache a module's input or replace its output by masked components.

    The target model's code is untouched: with no masks set, the hooks only
    record inputs (when capturing) and the model computes what it always did.

    Args:
        targets: name -> module being decomposed.
        layers: name -> its ComponentLayer.
    """

    def __init__(self, targets: dict[str, nn.Module], layers: dict[str, ComponentLayer]) -> None:
        self.layers = layers
        self.inputs: dict[str, Tensor] = {}
        self.masks: dict[str, Tensor] = {}
        self.capture = False
        self._handles = [module.register_forward_hook(self._hook(name)) for name, module in targets.items()]

    def _hook(self, name: str) -> Callable[..., Tensor | None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
            if self.capture:
                self.inputs[name] = args[0].detach()
            mask = self.masks.get(name)
            if mask is None:
                return None
            return self.layers[name].masked_output(args[0], mask).to(output.dtype)

        return hook

    def run_target(self, model: nn.Module, batch: Any, forward: ForwardFn) -> Tensor:
        """Run the unmodified model, caching each target's input; no gradients."""
        self.inputs, self.masks, self.capture = {}, {}, True
        try:
            with torch.no_grad():
                return forward(model, batch)
        finally:
            self.capture = False

    def run_masked(self, model: nn.Module, batch: Any, forward: ForwardFn, masks: dict[str, Tensor]) -> Tensor:
        """Run the model with the given layers replaced by their masked components."""
        self.masks = masks
        try:
            return forward(model, batch)
        finally:
            self.masks = {}

    def remove(self) -> None:
        """Detach the hooks from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
