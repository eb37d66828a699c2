"""mechdiff: find the mechanisms that changed between a base checkpoint and its fine-tune.

The public API is small and imported lazily, so ``import mechdiff`` stays cheap:
``open_results``, ``diff_checkpoints``, ``ResultsWriter``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["ResultsWriter", "__version__", "diff_checkpoints", "open_results"]

_LAZY = {
    "open_results": ("mechdiff.store", "open_results"),
    "ResultsWriter": ("mechdiff.store", "ResultsWriter"),
    "diff_checkpoints": ("mechdiff.api", "diff_checkpoints"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'mechdiff' has no attribute {name!r}")
