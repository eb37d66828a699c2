"""SPD training checkpoints: component layers, optimizer and mask-sampling generator state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mechdiff.errors import InputError
from mechdiff.training import (
    latest_checkpoint,
    optimizer_state,
    optimizer_tensors,
    read_checkpoint,
    write_checkpoint,
)

if TYPE_CHECKING:
    from mechdiff.weightdecomp.spd.trainer import SPDTrainer


@dataclass(frozen=True)
class Checkpointing:
    """Where and how often a long SPD run saves itself, and whether it continues a saved run."""

    directory: Path
    """Folder of the checkpoints (created when missing)."""
    every: int = 0
    """Steps between checkpoints (0: only at the end)."""
    resume: bool = False
    """Continue from the newest checkpoint in ``directory`` (a fresh start when there is none)."""
    stop_after: int | None = None
    """Stop training after this many steps, as a crash would (for tests of resume)."""

    def __post_init__(self) -> None:
        if self.every < 0 or (self.stop_after is not None and self.stop_after < 1):
            raise ValueError("Checkpointing: every must be >= 0 and stop_after >= 1")


def save(trainer: SPDTrainer, directory: Path, step: int, history: list[dict[str, float]]) -> Path:
    """Write the trainer's state after ``step`` completed steps."""
    tensors, optim_meta = optimizer_tensors(trainer.optimizer)
    for name, layer in trainer.layers.items():
        tensors.update({f"layer.{name}.{k}": v for k, v in layer.state_dict().items()})
    tensors["generator"] = trainer.generator.get_state()
    meta: dict[str, Any] = {"config": trainer.config.to_dict(), "optimizer": optim_meta, "history": history}
    return write_checkpoint(directory, step, tensors, meta)


def restore(trainer: SPDTrainer, directory: Path) -> tuple[int, list[dict[str, float]]]:
    """Load the newest checkpoint into the trainer; returns (completed steps, history) or (0, [])."""
    folder = latest_checkpoint(directory)
    if folder is None:
        return 0, []
    tensors, meta = read_checkpoint(folder)
    if meta["config"] != trainer.config.to_dict():
        raise InputError(f"checkpoint {folder} was written with a different SPD config; resume with the same "
                         "options or use a fresh checkpoint directory")
    for name, layer in trainer.layers.items():
        prefix = f"layer.{name}."
        layer.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    trainer.optimizer.load_state_dict(optimizer_state(tensors, meta["optimizer"]))
    trainer.generator.set_state(tensors["generator"].to(torch.uint8))
    return int(meta["step"]), list(meta["history"])
