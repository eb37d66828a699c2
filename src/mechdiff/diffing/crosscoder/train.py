"""Training a crosscoder: schedule, one optimizer step, dead-latent tracking, the loop.

The loop is deliberately thin: :func:`train_step` does the maths of one batch,
:func:`lr_schedule` the schedule, :mod:`mechdiff.training` the saving and
resuming; :func:`train_crosscoder` only wires them together.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
from tqdm import tqdm

from mechdiff.diffing.crosscoder.config import CrosscoderConfig
from mechdiff.diffing.crosscoder.module import CrossCoder, SparseCode
from mechdiff.diffing.crosscoder.precision import (
    autocast,
    matmul_scope,
    resolve_precision,
)
from mechdiff.distributed import (
    SINGLE,
    DistContext,
    all_reduce,
    average_gradients,
    barrier,
    broadcast_module,
)
from mechdiff.errors import UsageError
from mechdiff.kernels import sparse_decode
from mechdiff.progress import new_bar
from mechdiff.training import Checkpointing, LRSchedule, restore_training, save_training

RANK_SEED_STRIDE = 7919  # each rank streams its own share in its own seeded order


class BatchSource(Protocol):
    """Paired activations the trainer can stream (see activations.PairedActivations)."""

    @property
    def scales(self) -> torch.Tensor:
        """[M] per-model normalization multipliers."""
        ...

    @property
    def d_model(self) -> int: ...

    @property
    def n_models(self) -> int: ...

    def iter_batches(self, batch: int, seed: int, start_step: int = 0) -> Iterator[torch.Tensor]:
        """Endless raw batches [batch, M, D] in a seeded order, starting at batch number start_step."""
        ...


@dataclass
class TrainState:
    """What besides weights and optimizer a resumed run needs to continue exactly."""

    step: int = 0
    """Optimizer steps done."""
    rows_since_fired: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    """[F] training rows since each latent last fired (dead-latent tracking)."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Logged metrics, one dict per logging step."""


@dataclass(frozen=True)
class StepStats:
    """Metrics of one training batch (on normalized inputs)."""

    loss: float
    """Total loss (reconstruction + sparsity or auxiliary term)."""
    fve: tuple[float, ...]
    """Per-model fraction of variance explained."""
    l0: float
    """Mean active latents per row."""
    dead: int
    """Latents dead at this step."""


def lr_schedule(config: CrosscoderConfig) -> LRSchedule:
    """Linear warm-up, constant, then linear decay to 0 over the last ``decay_frac`` of the run."""
    return LRSchedule(config.lr, config.steps, config.warmup_steps, "linear" if config.decay_frac else "constant",
                      decay_start=config.steps * (1 - config.decay_frac))


def l1_weight_at(step: int, config: CrosscoderConfig) -> float:
    """L1 penalty weight, ramped over warm-up so latents are not killed before they find features."""
    if not config.warmup_steps:
        return config.l1_coeff
    return config.l1_coeff * min(1.0, (step + 1) / config.warmup_steps)


def make_optimizer(module: CrossCoder, config: CrosscoderConfig) -> torch.optim.Adam:
    """Adam over all crosscoder parameters (fused: one pass over each big matrix per step)."""
    return torch.optim.Adam(module.parameters(), lr=config.lr, betas=(0.9, 0.999), fused=True)


def train_step(
    module: CrossCoder, optimizer: torch.optim.Optimizer, x_BMD: torch.Tensor, state: TrainState,
    config: CrosscoderConfig, ctx: DistContext = SINGLE,
) -> StepStats:
    """One optimizer step on a normalized batch; updates dead-latent counters and the threshold.

    Under torchrun each rank passes its local batch (config.batch / world rows): gradients
    are averaged over ranks, so the step is the one of the global batch, except that
    BatchTopK selects its top batch*k activations within each rank's local batch. Firing
    counters and the threshold's batch minimum are reduced over ranks, so every rank keeps
    the same dead-latent set and threshold.

    ``config.precision`` 'bf16' runs the forward under bf16 autocast (backward and optimizer
    outside it, in float32); the float32 matmul mode (TF32 or IEEE) is the caller's to set,
    as `train_crosscoder` does with `precision.matmul_scope`.

    Args:
        module: the crosscoder being trained.
        optimizer: its optimizer (learning rate is set here from the schedule).
        x_BMD: [B, M, D] normalized activations (this rank's share of the batch).
        state: mutable training state (step, dead-latent counters).
        config: the run's configuration.
        ctx: the distributed context (one rank by default).

    Returns:
        The batch's metrics (averaged over ranks).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr_schedule(config).at(state.step)
    optimizer.zero_grad(set_to_none=True)
    with autocast(config.precision, str(x_BMD.device)):  # bf16: the forward only; backward runs outside
        if config.sparsity == "batchtopk":
            loss, recon_BMD, code = _batchtopk_loss(module, x_BMD, state, config)
        else:
            loss, recon_BMD, code = _l1_loss(module, x_BMD, l1_weight_at(state.step, config))
    loss.backward()
    average_gradients(ctx, list(module.parameters()))
    optimizer.step()
    _track_firing(state, code, x_BMD.shape[0], ctx)
    if config.sparsity == "batchtopk":
        _update_threshold(module, code, config.threshold_momentum, ctx)
    state.step += 1
    dead = int((state.rows_since_fired >= config.dead_after_tokens).sum())
    metrics = torch.tensor([float(loss.detach()), float(code.row_counts().float().mean()),
                            *fve_per_model(x_BMD, recon_BMD.detach())], dtype=torch.float64)
    metrics = all_reduce(ctx, metrics) / ctx.world
    return StepStats(float(metrics[0]), tuple(float(v) for v in metrics[2:]), float(metrics[1]), dead)


def _batchtopk_loss(
    module: CrossCoder, x_BMD: torch.Tensor, state: TrainState, config: CrosscoderConfig
) -> tuple[torch.Tensor, torch.Tensor, SparseCode]:
    with torch.no_grad():
        pre_BF = module.pre_acts(x_BMD)
    code = module.attach_encoder_grad(x_BMD, module.select(pre_BF, train=True))
    recon_BMD = module.decode_sparse(code)
    loss = (x_BMD - recon_BMD).pow(2).sum(dim=(1, 2)).mean()
    dead_F = state.rows_since_fired >= config.dead_after_tokens
    if config.aux_alpha > 0 and bool(dead_F.any()):
        residual_BMD = (x_BMD - recon_BMD).detach()
        loss = loss + config.aux_alpha * _aux_loss(module, x_BMD, pre_BF, dead_F, residual_BMD, config.aux_k)
    return loss, recon_BMD, SparseCode(code.values.detach(), code.indices, code.offsets)


def _aux_loss(
    module: CrossCoder, x_BMD: torch.Tensor, pre_BF: torch.Tensor, dead_F: torch.Tensor, residual_BMD: torch.Tensor, aux_k: int
) -> torch.Tensor:
    """Dead latents' top-aux_k reconstruction of the residual, relative to the residual's variance."""
    dead_ids = torch.nonzero(dead_F).squeeze(1)
    k_aux = min(aux_k, dead_ids.numel())
    top = pre_BF[:, dead_ids].topk(k_aux, dim=1)
    n_rows = x_BMD.shape[0]
    indices = dead_ids[top.indices].reshape(-1)
    offsets = torch.arange(0, n_rows * k_aux + 1, k_aux, dtype=torch.int64)
    values = top.values.clamp_min(0).reshape(-1)
    code = module.attach_encoder_grad(x_BMD, SparseCode(values, indices, offsets))
    w_dec = module.W_dec_FMD.reshape(module.dict_size, -1)
    aux_recon = sparse_decode(code.values * (values > 0), indices, offsets, w_dec).reshape(residual_BMD.shape)
    err = (residual_BMD - aux_recon).pow(2).sum(dim=(1, 2)).mean()
    spread = (residual_BMD - residual_BMD.mean(dim=0)).pow(2).sum(dim=(1, 2)).mean()
    return torch.nan_to_num(err / spread, nan=0.0)


def _l1_loss(module: CrossCoder, x_BMD: torch.Tensor, l1_weight: float) -> tuple[torch.Tensor, torch.Tensor, SparseCode]:
    # L1 codes are dense early in training, so this path stays dense
    acts_BF = module.pre_acts(x_BMD).clamp_min(0)
    w_dec = module.W_dec_FMD.reshape(module.dict_size, -1)
    recon_BMD = (acts_BF @ w_dec).reshape(x_BMD.shape) + module.b_dec_MD
    recon_loss = (x_BMD - recon_BMD).pow(2).sum(dim=(1, 2)).mean()
    penalty = (acts_BF * module.decoder_norms().sum(dim=1)).sum(dim=1).mean()
    with torch.no_grad():
        code = module.select(acts_BF, train=True)
    return recon_loss + l1_weight * penalty, recon_BMD, code


def _track_firing(state: TrainState, code: SparseCode, n_rows: int, ctx: DistContext) -> None:
    fired_F = all_reduce(ctx, torch.bincount(code.indices, minlength=state.rows_since_fired.numel()), "max") > 0
    state.rows_since_fired += n_rows * ctx.world
    state.rows_since_fired[fired_F] = 0


@torch.no_grad()
def _update_threshold(module: CrossCoder, code: SparseCode, momentum: float, ctx: DistContext) -> None:
    scores = code.values * module.decoder_norms().sum(dim=1)[code.indices]
    smallest = scores.min() if scores.numel() else torch.tensor(math.inf, dtype=scores.dtype)
    smallest = all_reduce(ctx, smallest.reshape(1), "min")[0]
    if not math.isfinite(float(smallest)):
        return
    if module.threshold < 0:
        module.threshold.copy_(smallest)
    else:
        module.threshold.mul_(momentum).add_((1 - momentum) * smallest)


def fve_per_model(x_BMD: torch.Tensor, recon_BMD: torch.Tensor) -> tuple[float, ...]:
    """Per-model fraction of variance explained: 1 - sum||x - x_hat||^2 / sum||x - mean x||^2."""
    err_M = (x_BMD - recon_BMD).pow(2).sum(dim=(0, 2))
    var_M = (x_BMD - x_BMD.mean(dim=0)).pow(2).sum(dim=(0, 2))
    return tuple(float(v) for v in 1 - err_M / var_M.clamp_min(1e-12))


@dataclass(frozen=True)
class TrainResult:
    """A trained crosscoder and its training log."""

    module: CrossCoder
    """The trained crosscoder (eval mode, input scale set)."""
    state: TrainState
    """Final training state (step count, dead-latent counters, logged history)."""
    precision: str = "fp32"
    """The precision the run trained in ('auto' resolved for its device: fp32, tf32 or bf16)."""


def train_crosscoder(
    data: BatchSource,
    config: CrosscoderConfig,
    *,
    checkpointing: Checkpointing | None = None,
    log_every: int = 50,
    progress: bool = True,
    on_step: Callable[[int, StepStats], None] | None = None,
    ctx: DistContext = SINGLE,
    device: str = "cpu",
) -> TrainResult:
    """Train a crosscoder on paired activations.

    Args:
        data: paired activations (raw; they are normalized with ``data.scales``).
        config: the run's configuration (``config.steps`` optimizer steps).
        checkpointing: save every N steps / resume a saved run / stop early (same config and data).
        log_every: steps between history entries.
        progress: show a tqdm bar on stderr.
        on_step: called with (step, stats) after every step.
        ctx: the distributed context: under torchrun each rank trains on its own share of
            the data with config.batch / world rows per step (see `train_step`); rank 0
            alone writes checkpoints, and every rank resumes from them.
        device: where the crosscoder trains ("cpu", "cuda", "cuda:N"); batches are moved
            there one at a time. The returned module is back on the CPU. ``config.precision``
            is resolved for it (see `precision`); the CUDA matmul mode is set for this call only.

    Returns:
        The trained module, final state and resolved precision; the same seed, data and
        config give the same weights whether or not the run was interrupted and resumed.

    Raises:
        UsageError: a precision the device cannot run (tf32 off CUDA, bf16 on a GPU without it).
        InputError: resuming a checkpoint written under another config (precision included).
    """
    config = dataclasses.replace(config, precision=resolve_precision(config.precision, device))
    local_batch = _local_batch(config.batch, ctx)
    torch.manual_seed(config.seed)
    module = CrossCoder.from_config(config, data.n_models, data.d_model).to(device)  # init on CPU: same weights
    module.input_scale_M.copy_(data.scales)
    optimizer = make_optimizer(module, config)
    state = TrainState(rows_since_fired=torch.zeros(config.dict_size, dtype=torch.int64))
    if checkpointing is not None and checkpointing.resume:
        state = _restore(checkpointing, module, optimizer, config) or state
    state.rows_since_fired = state.rows_since_fired.to(device)
    broadcast_module(ctx, module)
    end = config.steps if checkpointing is None else checkpointing.last_step(config.steps)
    batches = data.iter_batches(local_batch, config.seed + RANK_SEED_STRIDE * ctx.rank, start_step=state.step)
    module.train()
    with matmul_scope(config.precision), new_bar(total=end, initial=state.step, unit="step", desc="crosscoder",
                                                 disable=not (progress and ctx.is_main), file=sys.stderr) as bar:
        while state.step < end:
            stats = train_step(module, optimizer, module.normalize(next(batches).to(device)), state, config, ctx)
            _log(state, stats, log_every, bar)
            if on_step is not None:
                on_step(state.step, stats)
            if checkpointing is not None and checkpointing.due(state.step, end):
                _save(checkpointing, module, optimizer, state, config, ctx)
    module.eval()
    state.rows_since_fired = state.rows_since_fired.cpu()
    return TrainResult(module.cpu(), state, config.precision)


def _local_batch(batch: int, ctx: DistContext) -> int:
    if batch % ctx.world:
        raise UsageError(f"the crosscoder batch ({batch} rows) must divide evenly over the {ctx.world} ranks")
    return batch // ctx.world


def _save(checkpointing: Checkpointing, module: CrossCoder, optimizer: torch.optim.Optimizer, state: TrainState,
          config: CrosscoderConfig, ctx: DistContext) -> None:
    # rank 0 writes (every rank holds the same weights and state); the others wait so
    # that a run killed after this point resumes from this checkpoint on every rank
    if ctx.is_main:
        save_training(checkpointing.directory, state.step, modules={"module": module}, optimizer=optimizer,
                      config=config.to_dict(), tensors={"state.rows_since_fired": state.rows_since_fired},
                      meta={"history": state.history})
    barrier(ctx)


def _restore(checkpointing: Checkpointing, module: CrossCoder, optimizer: torch.optim.Optimizer,
             config: CrosscoderConfig) -> TrainState | None:
    # checkpoints written before the precision field existed trained in fp32
    restored = restore_training(checkpointing.directory, modules={"module": module}, optimizer=optimizer,
                                config=config.to_dict(), what="crosscoder", added_fields={"precision": "fp32"})
    if restored is None:
        return None
    return TrainState(step=restored.step, rows_since_fired=restored.tensors["state.rows_since_fired"],
                      history=list(restored.meta["history"]))


def _log(state: TrainState, stats: StepStats, log_every: int, bar: tqdm) -> None:
    bar.update(1)
    if state.step % log_every and state.step != 1:
        return
    entry = {"step": state.step, "loss": stats.loss, "l0": stats.l0, "dead": stats.dead}
    entry.update({f"fve_{m}": v for m, v in enumerate(stats.fve)})
    if not all(math.isfinite(v) for v in entry.values()):
        raise FloatingPointError(f"crosscoder training diverged at step {state.step}: {entry}")
    state.history.append(entry)
    bar.set_postfix(loss=f"{stats.loss:.3g}", l0=f"{stats.l0:.1f}", fve=",".join(f"{v:.2f}" for v in stats.fve))
