"""Model ids resolved from the local Hugging Face cache, offline: never the network.

``org/name`` or ``org/name@revision`` (a branch, a tag or a commit hash) names a
snapshot folder of the cache the Hugging Face tools fill (``HF_HUB_CACHE``, else
``HF_HOME/hub``, else ``~/.cache/huggingface/hub``). A path that exists always wins.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mechdiff.errors import InputError

_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder the environment names (it may not exist)."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def is_model_id(spec: str | os.PathLike) -> bool:
    """True when `spec` reads as ``org/name[@revision]`` and no such local path exists."""
    text = str(spec)
    return not Path(text).expanduser().exists() and _MODEL_ID.match(text.split("@", 1)[0]) is not None


def resolve_model(spec: str | os.PathLike) -> Path:
    """A local path as given, or the cached snapshot folder of a model id.

    Args:
        spec: a path, or ``org/name`` / ``org/name@revision``.

    Returns:
        The path to open.

    Raises:
        InputError: the path does not exist, or the id (or its revision) is not cached.
    """
    if not is_model_id(spec):
        return Path(spec).expanduser()
    repo, _, revision = str(spec).partition("@")
    revision = revision or "main"
    cache = hub_cache_dir()
    folder = cache / f"models--{repo.replace('/', '--')}"
    if not (folder / "snapshots").is_dir():
        raise InputError(
            f"{spec} is not a local path and not in the local Hugging Face cache ({cache}); "
            f"mechdiff never downloads: fetch it first (hf download {repo}) or set HF_HUB_CACHE"
        )
    snapshot = folder / "snapshots" / _commit_of(folder, revision)
    if not snapshot.is_dir():
        raise InputError(f"{repo}@{revision} is in the cache's refs but its snapshot is missing; download it again")
    return snapshot


def _commit_of(folder: Path, revision: str) -> str:
    if _COMMIT.match(revision) and (folder / "snapshots" / revision).is_dir():
        return revision
    ref = folder / "refs" / revision
    if ref.is_file():
        return ref.read_text(encoding="utf-8").strip()
    snapshots = sorted(p.name for p in (folder / "snapshots").iterdir())
    matches = [s for s in snapshots if s.startswith(revision)] if len(revision) >= 7 else []
    if len(matches) == 1:
        return matches[0]
    refs = sorted(p.name for p in (folder / "refs").iterdir()) if (folder / "refs").is_dir() else []
    raise InputError(
        f"revision {revision!r} of {folder.name.removeprefix('models--').replace('--', '/')} is not in the local "
        f"Hugging Face cache (cached refs: {', '.join(refs) or 'none'}; snapshots: {len(snapshots)})"
    )
