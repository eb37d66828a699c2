"""Crosscoder training checkpoints, on the shared safetensors + JSON machinery of mechdiff.training."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mechdiff.diffing.crosscoder.config import CrosscoderConfig
from mechdiff.errors import InputError
from mechdiff.training import (
    latest_checkpoint,
    optimizer_state,
    optimizer_tensors,
    read_checkpoint,
    write_checkpoint,
)

if TYPE_CHECKING:
    from mechdiff.diffing.crosscoder.module import CrossCoder
    from mechdiff.diffing.crosscoder.train import TrainState

__all__ = ["latest_checkpoint", "load_checkpoint", "save_checkpoint"]


def save_checkpoint(
    directory: str | Path, module: CrossCoder, optimizer: torch.optim.Optimizer, state: TrainState, config: CrosscoderConfig
) -> Path:
    """Write a checkpoint of module, optimizer and training state; returns its folder."""
    tensors, optim_meta = optimizer_tensors(optimizer)
    tensors.update({f"module.{k}": v for k, v in module.state_dict().items()})
    tensors["state.rows_since_fired"] = state.rows_since_fired
    meta = {"config": config.to_dict(), "optimizer": optim_meta, "history": state.history}
    return write_checkpoint(directory, state.step, tensors, meta)


def load_checkpoint(
    folder: str | Path, module: CrossCoder, optimizer: torch.optim.Optimizer, config: CrosscoderConfig
) -> TrainState:
    """Restore module and optimizer in place from a checkpoint; returns the training state.

    Raises:
        InputError: the checkpoint was written with a different configuration.
    """
    from mechdiff.diffing.crosscoder.train import TrainState

    tensors, meta = read_checkpoint(folder)
    if meta["config"] != config.to_dict():
        raise InputError(
            f"checkpoint {folder} was written with a different crosscoder config; "
            "resume with the same options or use a fresh checkpoint directory"
        )
    module.load_state_dict({k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")})
    optimizer.load_state_dict(optimizer_state(tensors, meta["optimizer"]))
    return TrainState(step=meta["step"], rows_since_fired=tensors["state.rows_since_fired"], history=meta["history"])
