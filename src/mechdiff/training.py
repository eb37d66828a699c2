"""Training state of every long run (crosscoder, SPD): save/restore and the learning-rate schedule.

Checkpoints are safetensors + JSON, never pickles. Layout:
``DIR/step-00000100/{tensors.safetensors, state.json}`` plus ``DIR/latest.json`` naming the
newest complete checkpoint. A checkpoint folder is written under a temporary name and
renamed, and ``latest.json`` is replaced atomically, so a crash mid-save leaves the previous
checkpoint usable. :func:`save_training` / :func:`restore_training` store any trainer's
modules, optimizer, extra tensors and JSON metadata, and refuse to resume under a different
configuration; :class:`Checkpointing` says where and how often a trainer saves.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mechdiff.errors import InputError

KEEP_CHECKPOINTS = 2


@dataclass(frozen=True)
class Checkpointing:
    """Where and how often a long run saves itself, and whether it continues a saved run."""

    directory: Path
    """Folder of the checkpoints (created when missing)."""
    every: int = 0
    """Steps between checkpoints (0: only at the end)."""
    resume: bool = False
    """Continue from the newest checkpoint in ``directory`` (a fresh start when there is none)."""
    stop_after: int | None = None
    """Stop training after this many steps in total, as a crash would (for tests of resume and budgets)."""

    def __post_init__(self) -> None:
        if self.every < 0 or (self.stop_after is not None and self.stop_after < 1):
            raise ValueError("Checkpointing: every must be >= 0 and stop_after >= 1")
        object.__setattr__(self, "directory", Path(self.directory))

    def last_step(self, steps: int) -> int:
        """The step count this run stops at: ``steps``, or ``stop_after`` when that comes first."""
        return steps if self.stop_after is None else min(steps, self.stop_after)

    def due(self, done: int, last: int) -> bool:
        """Whether to save after ``done`` completed steps of a run that stops at ``last``."""
        return done == last or (self.every > 0 and done % self.every == 0)


@dataclass(frozen=True)
class Restored:
    """What :func:`restore_training` read besides the weights and optimizer it loaded in place."""

    step: int
    """Completed optimizer steps of the saved run."""
    tensors: dict[str, torch.Tensor]
    """The extra tensors given to :func:`save_training`."""
    meta: dict[str, Any]
    """The extra JSON metadata given to :func:`save_training`."""


def save_training(directory: str | Path, step: int, *, modules: Mapping[str, torch.nn.Module],
                  optimizer: torch.optim.Optimizer, config: dict[str, Any],
                  tensors: Mapping[str, torch.Tensor] | None = None,
                  meta: Mapping[str, Any] | None = None) -> Path:
    """Write a trainer's state after ``step`` completed steps; returns the checkpoint folder.

    Args:
        directory: the checkpoint folder (see the module docstring for its layout).
        step: completed optimizer steps.
        modules: name -> module; each state dict is stored under ``name.``.
        optimizer: its state tensors are stored as ``optim.*``, its param groups as JSON.
        config: the run's configuration as JSON; a resume must give the same.
        tensors: extra tensors (generator state, counters), stored under their own names.
        meta: extra JSON-able metadata (history).
    """
    flat, optim_meta = optimizer_tensors(optimizer)
    for name, module in modules.items():
        flat.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    flat.update(tensors or {})
    return write_checkpoint(directory, step, flat, {"config": config, "optimizer": optim_meta, **(meta or {})})


def restore_training(directory: str | Path, *, modules: Mapping[str, torch.nn.Module],
                     optimizer: torch.optim.Optimizer, config: dict[str, Any], what: str,
                     added_fields: Mapping[str, Any] | None = None) -> Restored | None:
    """Load the newest checkpoint in ``directory`` into ``modules`` and ``optimizer``; None when there is none.

    Args:
        directory: the checkpoint folder.
        modules, optimizer: as given to :func:`save_training`; loaded in place.
        config: the resuming run's configuration as JSON.
        what: the trainer's name for the error message ("crosscoder", "SPD").
        added_fields: config fields added since older checkpoints were written, with the value
            those checkpoints ran under (a checkpoint lacking the field compares as that value).

    Raises:
        InputError: the checkpoint was written with a different configuration (the message
            names the fields that differ).
    """
    folder = latest_checkpoint(directory)
    if folder is None:
        return None
    flat, meta = read_checkpoint(folder)
    saved = {**(added_fields or {}), **(meta.get("config") or {})}
    if saved != config:
        raise InputError(f"checkpoint {folder} was written with a different {what} config "
                         f"({_config_difference(saved, config)}); "
                         "resume with the same options or use a fresh checkpoint directory")
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)})
    optimizer.load_state_dict(optimizer_state(flat, meta["optimizer"]))
    owned = tuple(f"{name}." for name in modules) + ("optim.",)
    extra = {k: v for k, v in flat.items() if not k.startswith(owned)}
    rest = {k: v for k, v in meta.items() if k not in ("config", "optimizer", "step")}
    return Restored(int(meta["step"]), extra, rest)


def _config_difference(saved: dict[str, Any], now: dict[str, Any]) -> str:
    keys = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    return ", ".join(f"{k}: {saved.get(k)!r} there, {now.get(k)!r} now" for k in keys[:3])


def write_checkpoint(directory: str | Path, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write one checkpoint atomically and point ``latest.json`` at it; returns its folder."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / "tensors.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, **meta}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer = root / "latest.json.tmp"
    pointer.write_text(json.dumps({"latest": final.name}))
    os.replace(pointer, root / "latest.json")
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-KEEP_CHECKPOINTS]:
        if old.name != final.name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint folder in directory, or None."""
    pointer = Path(directory) / "latest.json"
    if not pointer.is_file():
        return None
    folder = Path(directory) / json.loads(pointer.read_text())["latest"]
    return folder if folder.is_dir() else None


def read_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of one checkpoint folder."""
    folder = Path(folder)
    return load_file(str(folder / "tensors.safetensors")), json.loads((folder / "state.json").read_text())


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as flat named tensors plus its JSON-able param groups."""
    sd = optimizer.state_dict()
    tensors = {}
    for pid, slots in sd["state"].items():
        for name, value in slots.items():
            tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value).detach().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_tensors`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate per step: linear warm-up, then constant, linear or cosine decay to a floor.

    One schedule for every trainer: the toy LM (cosine to 10% after warm-up), SPD (constant or
    cosine to 0 after warm-up) and the crosscoder (constant, then linear to 0 over the last
    ``decay_frac`` of the run) are settings of it.
    """

    peak: float
    """Learning rate after warm-up."""
    total: int
    """Steps of the run (the decay reaches ``floor * peak`` here)."""
    warmup: int = 0
    """Warm-up steps: step s < warmup runs at ``peak * (s + 1) / warmup``."""
    decay: str = "constant"
    """'constant', 'linear' or 'cosine'."""
    decay_start: float | None = None
    """Step where the decay begins (None: at the end of warm-up)."""
    floor: float = 0.0
    """Fraction of ``peak`` the decay ends at."""

    def __post_init__(self) -> None:
        if self.decay not in ("constant", "linear", "cosine"):
            raise ValueError(f"LRSchedule: decay must be 'constant', 'linear' or 'cosine', not {self.decay!r}")
        if self.warmup < 0 or not 0.0 <= self.floor <= 1.0:
            raise ValueError("LRSchedule: warmup must be >= 0 and floor in [0, 1]")

    def at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based)."""
        warm = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        start = self.warmup if self.decay_start is None else self.decay_start
        if self.decay == "constant" or step < start:
            return self.peak * warm
        span = self.total - start if self.total > start else 1
        if self.decay == "linear":
            shape = max(0.0, (self.total - step) / span)
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * (step - start) / span))
        return self.peak * warm * (self.floor + (1 - self.floor) * shape)
