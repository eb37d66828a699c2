"""What a lens's ``write(writer)`` may call: the typed face of :class:`~mechdiff.store.ResultsWriter`.

Lens packages type their writers with :class:`PartWriter` so they depend on this
small protocol, not on HDF5 or the atomic-file machinery behind it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import h5py


@runtime_checkable
class PartWriter(Protocol):
    """Writes tables, arrays and attributes into one results file (``ResultsWriter`` is one)."""

    def group(self, name: str) -> h5py.Group:
        """Group ``name``, created (with its parents) when missing."""
        ...

    def table(self, name: str, columns: dict[str, Any]) -> h5py.Dataset:
        """A table of equal-length columns as one compound dataset at ``name``."""
        ...

    def array(self, name: str, array: Any) -> h5py.Dataset:
        """A numeric array at ``name`` (large ones chunked and compressed)."""
        ...

    def attrs(self, name: str, values: dict[str, Any]) -> None:
        """Attributes of group ``name`` ("" or "/" for the root)."""
        ...
