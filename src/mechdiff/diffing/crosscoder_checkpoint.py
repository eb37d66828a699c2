"""Crosscoder training checkpoints: tensors in safetensors, everything else in JSON (no pickles).

Layout: ``DIR/step-00000100/{tensors.safetensors, state.json}`` plus ``DIR/latest.json``
naming the newest complete checkpoint. A checkpoint directory is written under a
temporary name and renamed, and ``latest.json`` is replaced atomically, so a
crash mid-save leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from mechdiff.diffing.crosscoder_config import CrosscoderConfig
from mechdiff.errors import InputError

if TYPE_CHECKING:
    from mechdiff.diffing.crosscoder import CrossCoder
    from mechdiff.diffing.train import TrainState

KEEP_CHECKPOINTS = 2


def save_checkpoint(
    directory: str | Path, module: CrossCoder, optimizer: torch.optim.Optimizer, state: TrainState, config: CrosscoderConfig
) -> Path:
    """Write a checkpoint of module, optimizer and training state; returns its folder."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:08d}"
    tmp = root / f".tmp-step-{state.step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors, optim_meta = _optimizer_tensors(optimizer)
    tensors.update({f"module.{k}": v.detach().contiguous() for k, v in module.state_dict().items()})
    tensors["state.rows_since_fired"] = state.rows_since_fired.contiguous()
    save_file(tensors, str(tmp / "tensors.safetensors"))
    meta = {"step": state.step, "config": config.to_dict(), "optimizer": optim_meta, "history": state.history}
    (tmp / "state.json").write_text(json.dumps(meta))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _write_latest(root, final.name)
    _prune(root, keep=final.name)
    return final


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint folder in directory, or None."""
    pointer = Path(directory) / "latest.json"
    if not pointer.is_file():
        return None
    folder = Path(directory) / json.loads(pointer.read_text())["latest"]
    return folder if folder.is_dir() else None


def load_checkpoint(
    folder: str | Path, module: CrossCoder, optimizer: torch.optim.Optimizer, config: CrosscoderConfig
) -> TrainState:
    """Restore module and optimizer in place from a checkpoint; returns the training state.

    Raises:
        InputError: the checkpoint was written with a different configuration.
    """
    from mechdiff.diffing.train import TrainState

    folder = Path(folder)
    meta = json.loads((folder / "state.json").read_text())
    if meta["config"] != config.to_dict():
        raise InputError(
            f"checkpoint {folder} was written with a different crosscoder config; "
            "resume with the same options or use a fresh checkpoint directory"
        )
    tensors = load_file(str(folder / "tensors.safetensors"))
    module.load_state_dict({k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")})
    optimizer.load_state_dict(_optimizer_state(tensors, meta["optimizer"]))
    return TrainState(step=meta["step"], rows_since_fired=tensors["state.rows_since_fired"], history=meta["history"])


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors = {}
    for pid, slots in sd["state"].items():
        for name, value in slots.items():
            tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value).detach().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _write_latest(root: Path, name: str) -> None:
    tmp = root / "latest.json.tmp"
    tmp.write_text(json.dumps({"latest": name}))
    os.replace(tmp, root / "latest.json")


def _prune(root: Path, keep: str) -> None:
    folders = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in folders[:-KEEP_CHECKPOINTS]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
