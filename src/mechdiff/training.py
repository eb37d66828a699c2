"""Training checkpoints for long runs (crosscoder, SPD): safetensors + JSON, never pickles.

Layout: ``DIR/step-00000100/{tensors.safetensors, state.json}`` plus ``DIR/latest.json``
naming the newest complete checkpoint. A checkpoint folder is written under a temporary
name and renamed, and ``latest.json`` is replaced atomically, so a crash mid-save leaves
the previous checkpoint usable.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

KEEP_CHECKPOINTS = 2


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
