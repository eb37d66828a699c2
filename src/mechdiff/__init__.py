"""mechdiff: find the mechanisms that changed between a base checkpoint and its fine-tune.

The public API is small and imported lazily, so ``import mechdiff`` stays cheap:

- ``open_results(path)``: read a results file (parts ``weights``, ``audit``, ``crosscoder``,
  ``components``; tables as numpy or pandas; ``findings()``).
- ``diff_checkpoints(base, ft, out=...)``: the data-free weight diff.
- ``audit_checkpoints(base, ft, data=..., out=...)``: every lens, ranked findings, a verdict.
- ``ResultsWriter``: write your own results file atomically.
"""

__version__ = "0.1.0"
__all__ = ["ResultsWriter", "__version__", "audit_checkpoints", "diff_checkpoints", "open_results"]

_LAZY = {
    "open_results": ("mechdiff.results", "open_results"),
    "ResultsWriter": ("mechdiff.store", "ResultsWriter"),
    "diff_checkpoints": ("mechdiff.api", "diff_checkpoints"),
    "audit_checkpoints": ("mechdiff.api", "audit_checkpoints"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'mechdiff' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
