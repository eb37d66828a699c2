"""Stochastic parameter decomposition (SPD) of chosen weights of any torch module.

Each decomposed weight W [d_out, d_in] becomes C rank-1 subcomponents u_c v_c^T,
attached to the unmodified model with forward hooks. Training minimises
faithfulness + stochastic reconstruction (all layers and layerwise) + importance
minimality (see "Stochastic parameter decomposition" in DESIGN.md).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mechdiff.errors import InputError
from mechdiff.training import Checkpointing, LRSchedule, restore_training, save_training
from mechdiff.weightdecomp.spd.ci import (
    hard_sigmoid,
    lower_leaky_hard_sigmoid,
    upper_leaky_hard_sigmoid,
)
from mechdiff.weightdecomp.spd.components import (
    ComponentHooks,
    ComponentLayer,
    ForwardFn,
    default_forward,
    find_targets,
    module_kind,
    weight_out_in,
)
from mechdiff.weightdecomp.spd.config import SPDConfig
from mechdiff.weightdecomp.spd.decomposition import Decomposition, ModuleComponents
from mechdiff.weightdecomp.spd.losses import (
    OutputDistance,
    faithfulness_loss,
    importance_minimality_loss,
    output_distance,
    sample_masks,
)

__all__ = ["Decomposition", "ModuleComponents", "SPDConfig", "SPDTrainer", "decompose_module"]


@dataclass
class StepLosses:
    """One step's loss terms (tensors, so the total can be back-propagated)."""

    faithfulness: Tensor
    stochastic_recon: Tensor
    stochastic_recon_layerwise: Tensor
    importance_minimality: Tensor
    total: Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in self.__dict__.items()}


class SPDTrainer:
    """Holds a model, its component layers and hooks; runs SPD steps.

    Args:
        model: the target model (frozen during decomposition).
        module_globs: fnmatch patterns selecting the weights to decompose.
        config: SPD hyper-parameters.
        output: 'mse' or 'kl' output distance.
        forward: how to call the model on a batch (default: ``model(batch)``).
        device: where the model (moved there), the components, their causal-importance MLPs,
            the masks and the batches live; None: where the model's parameters already are.
    """

    def __init__(
        self,
        model: nn.Module,
        module_globs: list[str],
        config: SPDConfig,
        output: str = "mse",
        forward: ForwardFn | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        if device is not None:  # None: the model stays where its caller put it (the audit's models)
            model.to(device)
        self.device = torch.device(device) if device is not None else model_device(model)
        self.model = model
        self.model_dtype = model_dtype(model)
        self.config = config
        self.output = output
        self.distance: OutputDistance = output_distance(output)
        self.forward = forward or default_forward
        self.targets = find_targets(model, module_globs)
        # one generator on the device draws the initialisation and the masks: seeded runs repeat
        # exactly on one device (a CPU and a GPU draw different numbers from the same seed)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.layers = {name: self._make_layer(module) for name, module in self.targets.items()}
        self.target_weights = [weight_out_in(m, self.layers[n].kind).detach().float() for n, m in self.targets.items()]
        self.hooks = ComponentHooks(self.targets, self.layers)
        # the importance penalty's factor per layer, in self.layers order (fixed per run)
        self.importance_scales = [config.importance_scale(name) for name in self.layers]
        self.params = [p for layer in self.layers.values() for p in layer.parameters()]
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr)
        self.schedule = lr_schedule(config)
        for p in model.parameters():
            p.requires_grad_(False)

    def _make_layer(self, module: nn.Module) -> ComponentLayer:
        kind = module_kind(module)
        assert kind is not None
        bias = getattr(module, "bias", None)
        return ComponentLayer(kind, weight_out_in(module, kind).detach().float(), bias,
                              self.config.n_components, self.config.ci_hidden, self.generator)

    def importances(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(lower-leaky, upper-leaky) causal importances on the cached target inputs."""
        slope = self.config.leaky_slope
        lower, upper = {}, {}
        for name, layer in self.layers.items():
            pre = layer.ci(layer.inner(self.hooks.inputs[name]))
            lower[name] = lower_leaky_hard_sigmoid(pre, slope)
            upper[name] = upper_leaky_hard_sigmoid(pre, slope)
        return lower, upper

    def place(self, batch: Any) -> Any:
        """The batch (a tensor or a dict of them) on the trainer's device."""
        if isinstance(batch, dict):
            return {k: self.place(v) for k, v in batch.items()}
        return batch.to(self.device) if isinstance(batch, Tensor) else batch

    def losses(self, batch: Any, step: int) -> StepLosses:
        """All SPD loss terms on one batch."""
        cfg = self.config
        batch = self.place(batch)
        target_out = self.hooks.run_target(self.model, batch, self.forward)
        ci_lower, ci_upper = self.importances()
        faith = faithfulness_loss(self.target_weights, [layer.weight_OI() for layer in self.layers.values()])
        recon, layerwise = self._recon_losses(batch, target_out, ci_lower)
        importance = importance_minimality_loss(list(ci_upper.values()), cfg.pnorm_at(step),
                                                cfg.importance_eps, self.importance_scales)
        total = (cfg.faithfulness_coeff * faith + cfg.stochastic_recon_coeff * recon
                 + cfg.stochastic_recon_layerwise_coeff * layerwise
                 + cfg.importance_minimality_coeff * importance)
        return StepLosses(faith, recon, layerwise, importance, total)

    def _recon_losses(self, batch: Any, target_out: Tensor, ci_lower: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        cfg = self.config
        recon = torch.zeros((), device=self.device)
        layerwise = torch.zeros((), device=self.device)
        for _ in range(cfg.n_mask_samples):
            masks = sample_masks(ci_lower, self.generator)
            if cfg.stochastic_recon_coeff > 0:
                out = self.hooks.run_masked(self.model, batch, self.forward, masks)
                recon = recon + self.distance(out, target_out)
            if cfg.stochastic_recon_layerwise_coeff > 0:
                for name in self.layers:
                    out = self.hooks.run_masked(self.model, batch, self.forward, {name: masks[name]})
                    layerwise = layerwise + self.distance(out, target_out) / len(self.layers)
        return recon / cfg.n_mask_samples, layerwise / cfg.n_mask_samples

    def step(self, batch: Any, step: int) -> StepLosses:
        """One optimizer step at the learning rate of ``lr_schedule(config)`` at ``step``."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.at(step)
        losses = self.losses(batch, step)
        self.optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.optimizer.step()
        return losses

    @torch.no_grad()
    def ci_statistics(self, batches: Iterable[Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Module -> ([C] fraction of inputs with g_c > alive_threshold, [C] mean g_c)."""
        fired: dict[str, Tensor] = {}
        total: dict[str, Tensor] = {}
        count = 0
        for batch in batches:
            self.hooks.run_target(self.model, self.place(batch), self.forward)
            for name, layer in self.layers.items():
                g_NC = hard_sigmoid(layer.ci(layer.inner(self.hooks.inputs[name])))
                g_NC = g_NC.reshape(-1, g_NC.shape[-1])  # every position of a sequence is one input
                fired[name] = fired.get(name, 0) + (g_NC > self.config.alive_threshold).sum(0)
                total[name] = total.get(name, 0) + g_NC.sum(0)
            count += len(g_NC)  # all decomposed modules see the same inputs
        if count == 0:
            raise InputError("no evaluation data left to measure causal importances; give more data")
        return {n: ((fired[n] / count).cpu().numpy(), (total[n] / count).cpu().numpy()) for n in self.layers}

    def decomposition(self, stats: dict[str, tuple[np.ndarray, np.ndarray]],
                      history: list[dict[str, float]]) -> Decomposition:
        """Freeze the current components into a numpy :class:`Decomposition` (on the CPU)."""
        modules = {}
        for name, layer in self.layers.items():
            freq, mean_ci = stats[name]
            modules[name] = ModuleComponents(
                name=name, kind=layer.kind,
                V_IC=_numpy(layer.V_IC), U_CO=_numpy(layer.U_CO), alive_frequency_C=freq, mean_ci_C=mean_ci,
                ci_params={k: _numpy(v) for k, v in layer.ci.state_dict().items()},
            )
        return Decomposition(modules=modules, config=self.config, output=self.output, history=history,
                             model_dtype=self.model_dtype)


def _numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().copy()


def model_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter is (the CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def model_dtype(model: nn.Module) -> str:
    """The dtype the model runs in (its first floating-point parameter's), e.g. "bfloat16"."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return str(dtype).removeprefix("torch.")


def lr_schedule(config: SPDConfig) -> LRSchedule:
    """Linear warm-up over ``lr_warmup_frac`` of the steps, then constant or cosine decay to 0."""
    return LRSchedule(config.lr, config.steps, int(config.lr_warmup_frac * config.steps), config.lr_schedule)


def _batch_stream(data: Iterable[Any]) -> Iterator[Any]:
    """Batches forever: re-iterates a re-iterable (a list, a DataLoader); a one-shot iterator must last."""
    reiterable = not isinstance(data, Iterator)
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty or not reiterable:
            raise InputError("the data ran out before training finished; give more data or fewer --steps")


def decompose_module(
    model: nn.Module,
    module_globs: list[str],
    data_iter: Iterable[Any],
    config: SPDConfig,
    output: str = "mse",
    *,
    forward: ForwardFn | None = None,
    progress: bool = False,
    log_every: int = 100,
    checkpointing: Checkpointing | None = None,
    device: str | torch.device | None = None,
) -> Decomposition:
    """Decompose the chosen weights of ``model`` into rank-1 subcomponents with SPD.

    Args:
        model: any torch module; its computation is not modified (hooks are removed afterwards)
            but its parameters are set to ``requires_grad=False`` and it is moved to ``device``.
        module_globs: fnmatch patterns on module names (nn.Linear, GPT-2 Conv1D, nn.Embedding).
        data_iter: batches the model accepts (tensor, or dict of keyword arguments);
            a re-iterable is cycled, a one-shot iterator must supply ``steps + eval_batches``.
        config: SPD hyper-parameters.
        output: 'mse' (regression models) or 'kl' (language model logits).
        forward: ``forward(model, batch) -> output tensor``; default calls ``model(batch)``
            and takes ``.logits`` when present.
        progress: show a progress bar on stderr.
        log_every: record the loss terms every this many steps in ``history``.
        checkpointing: save every N steps / resume a saved run (same config and data order).
        device: where everything of the training lives (batches are moved there);
            None: the device the model is on.

    Returns:
        The trained :class:`Decomposition` (numpy, on the CPU) with alive frequencies and mean
        causal importances measured on ``config.eval_batches`` further batches.
    """
    trainer = SPDTrainer(model, module_globs, config, output, forward, device)
    stream = _batch_stream(data_iter)
    try:
        history = train(trainer, stream, progress=progress, log_every=log_every, checkpointing=checkpointing)
        stats = trainer.ci_statistics(next(stream) for _ in range(config.eval_batches))
    finally:
        trainer.hooks.remove()
    return trainer.decomposition(stats, history)


def train(trainer: SPDTrainer, stream: Iterator[Any], *, progress: bool, log_every: int,
          checkpointing: Checkpointing | None = None) -> list[dict[str, float]]:
    """Run ``config.steps`` SPD steps (continuing a checkpoint when asked); return the logged loss history."""
    from mechdiff.progress import new_bar

    steps = trainer.config.steps
    first, history = 0, []
    if checkpointing is not None and checkpointing.resume:
        first, history = _restore(trainer, checkpointing)
        for _ in range(first):  # the same batches in the same order as an uninterrupted run
            next(stream)
    last = steps if checkpointing is None else checkpointing.last_step(steps)
    start = time.perf_counter()
    bar = new_bar(range(first, last), file=sys.stderr, disable=not progress, desc="SPD", mininterval=1.0)
    for step in bar:
        losses = trainer.step(next(stream), step)
        if step % log_every == 0 or step == steps - 1:
            row = {"step": step, "seconds": time.perf_counter() - start, **losses.as_floats()}
            history.append(row)
            bar.set_postfix(total=f"{row['total']:.3g}", recon=f"{row['stochastic_recon']:.3g}")
        if checkpointing is not None and checkpointing.due(step + 1, last):
            save_training(checkpointing.directory, step + 1, modules=_layer_modules(trainer),
                          optimizer=trainer.optimizer, config=trainer.config.to_dict(),
                          tensors={"generator": trainer.generator.get_state()},
                          meta={"history": history, "device": trainer.device.type})
    return history


def _layer_modules(trainer: SPDTrainer) -> dict[str, nn.Module]:
    return {f"layer.{name}": layer for name, layer in trainer.layers.items()}


def _restore(trainer: SPDTrainer, checkpointing: Checkpointing) -> tuple[int, list[dict[str, float]]]:
    """Load the newest checkpoint into the trainer; returns (completed steps, history) or (0, [])."""
    restored = restore_training(checkpointing.directory, modules=_layer_modules(trainer),
                                optimizer=trainer.optimizer, config=trainer.config.to_dict(), what="SPD")
    if restored is None:
        return 0, []
    saved_on = restored.meta.get("device", "cpu")
    if saved_on != trainer.device.type:  # the random streams of a CPU and a GPU generator differ
        raise InputError(f"the SPD checkpoint in {checkpointing.directory} was trained on {saved_on}; "
                         f"resume it with --device {saved_on} or use a fresh checkpoint directory")
    trainer.generator.set_state(restored.tensors["generator"].to(torch.uint8))
    return restored.step, list(restored.meta["history"])
