"""Reading organism manifests: ours (organism.json) and the diffing community's config shape.

A manifest names a base model, a fine-tuned model or an adapter over the base, a one-line
description, an objective type and (optionally) the tokens that carry the objective and a
corpus to audit with. ``finetuned_models: {<base>: {default: {model_id, adapter_id}}}``, the
nesting of the public organism configs, is read too, as long as the ids are local paths.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mechdiff.errors import InputError

REQUIRED = ("name", "base_model", "description", "type")


def load_manifests(path: str | Path) -> list[dict[str, Any]]:
    """Every organism manifest in ``path``: a .json/.yaml file (one manifest or a list), or a folder
    searched for organism.json and *.yaml files.

    Raises:
        InputError: missing files, unreadable or incomplete manifests.
    """
    path = Path(path)
    if path.is_dir():
        # organism.json files (ours) and YAML configs; model folders' own JSON files are not manifests
        files = sorted(p for p in path.rglob("*") if p.name == "organism.json" or p.suffix in (".yaml", ".yml"))
        if not files:
            raise InputError(f"{path} holds no organism manifests (organism.json, *.yaml)")
        return [m for f in files for m in load_manifests(f)]
    if not path.is_file():
        raise InputError(f"organism manifest {path} not found")
    data = _read(path)
    entries = data if isinstance(data, list) else data.get("organisms", [data]) if isinstance(data, dict) else None
    if entries is None:
        raise InputError(f"{path}: expected a manifest object or a list of them")
    return [normalize(entry, path) for entry in entries]


def _read(path: Path) -> Any:
    text = path.read_text()
    try:
        if path.suffix == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except ImportError as exc:
        raise InputError(f"{path}: reading YAML needs pyyaml (pip install pyyaml), or give JSON") from exc
    except ValueError as exc:  # json and yaml errors both derive from ValueError
        raise InputError(f"{path} is not a readable manifest: {exc}") from exc


def normalize(entry: dict[str, Any], origin: Path) -> dict[str, Any]:
    """A manifest in our flat shape, paths resolved against the manifest's folder."""
    if not isinstance(entry, dict):
        raise InputError(f"{origin}: a manifest must be an object")
    entry = dict(entry)
    nested = entry.pop("finetuned_models", None)
    if isinstance(nested, dict) and nested:  # {base: {variant: {model_id, adapter_id}}}
        base, variants = next(iter(nested.items()))
        chosen = variants.get("default", next(iter(variants.values()))) if isinstance(variants, dict) else {}
        entry.setdefault("base_model", base)
        entry.setdefault("finetuned_model", chosen.get("model_id"))
        entry.setdefault("adapter", chosen.get("adapter_id"))
    missing = [k for k in REQUIRED if not entry.get(k)]
    if missing or not (entry.get("finetuned_model") or entry.get("adapter")):
        raise InputError(f"{origin}: manifest {entry.get('name', '?')!r} lacks "
                         f"{', '.join(missing) or 'finetuned_model or adapter'}")
    for key in ("base_model", "finetuned_model", "adapter", "corpus"):
        if entry.get(key):
            resolved = (origin.parent / entry[key]) if not Path(entry[key]).is_absolute() else Path(entry[key])
            entry[key] = str(resolved)
    entry.setdefault("null", entry.get("type") == "null")
    entry.setdefault("relevant_tokens", [])
    entry.setdefault("seed", 0)
    return entry
