"""Atomic HDF5 result writer: everything goes to OUT.tmp, then one os.replace."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from mechdiff import __version__
from mechdiff.errors import InputError
from mechdiff.interrupt import interrupted
from mechdiff.store.schema import (
    CHUNK_THRESHOLD,
    SCHEMA_VERSION,
    columns_to_structured,
    to_attr,
)

if TYPE_CHECKING:  # typing.Self is 3.11+; annotations are never evaluated (python_requires >= 3.10)
    from typing import Self


def temp_path_for(path: Path) -> Path:
    """The temporary file a result is written to before it is moved into place."""
    return path.with_name(path.name + ".tmp")


def check_output_path(path: str | os.PathLike, inputs: list[str | os.PathLike] = ()) -> Path:
    """Fail early (before any heavy work) when ``path`` cannot be written.

    Args:
        path: the result file the user asked for.
        inputs: paths that must not be overwritten by the result.

    Returns:
        The output path as a resolved ``Path``.
    """
    out = Path(path).expanduser().resolve()
    if out.is_dir():
        raise InputError(f"output {path} is a folder; give a file name such as {Path(path) / 'out.h5'}")
    if not out.parent.is_dir():
        raise InputError(f"output folder {out.parent} does not exist; create it first")
    if not os.access(out.parent, os.W_OK):
        raise InputError(f"output folder {out.parent} is not writable")
    for inp in inputs:
        inp_path = Path(inp).expanduser().resolve()
        if inp_path == out or (inp_path.is_dir() and inp_path in out.parents and out.suffix != ".h5"):
            raise InputError(f"output {path} would overwrite the input {inp}; choose another file name")
    return out


class ResultsWriter:
    """Context manager that writes one mechdiff results file atomically.

    The file is written to ``OUT.h5.tmp`` and moved over ``OUT.h5`` only when
    the ``with`` block finishes without an exception; on failure the temporary
    file is removed and any existing ``OUT.h5`` is left untouched.

    Args:
        path: the final result path.
        command: the command line (or API call) that produced the results.
        inputs: named input paths, e.g. ``{"base": ..., "ft": ...}``; stored as root attributes.
        fingerprints: named fingerprints of the inputs (hash of headers/index).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        command: str,
        inputs: dict[str, str] | None = None,
        fingerprints: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.tmp_path = temp_path_for(self.path)
        self._root_attrs = {
            "schema_version": SCHEMA_VERSION,
            "mechdiff_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command,
        }
        for name, value in (inputs or {}).items():
            self._root_attrs[name] = str(value)
        for name, value in (fingerprints or {}).items():
            self._root_attrs[f"{name}_fingerprint"] = str(value)
        self._file: h5py.File | None = None

    def __enter__(self) -> Self:
        try:
            self._file = h5py.File(self.tmp_path, "w")
        except OSError as exc:
            raise InputError(f"cannot write {self.tmp_path}: {exc.strerror or exc}") from exc
        for name, value in self._root_attrs.items():
            self._file.attrs[name] = to_attr(value)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        if exc_type is None and not interrupted():
            os.replace(self.tmp_path, self.path)
            return
        self.tmp_path.unlink(missing_ok=True)
        if exc_type is None:  # Ctrl-C was swallowed on the way (interrupt.py): no results file, and say so
            raise KeyboardInterrupt

    @property
    def file(self) -> h5py.File:
        if self._file is None:
            raise RuntimeError("ResultsWriter is only usable inside its with-block")
        return self._file

    def group(self, name: str) -> h5py.Group:
        """Return group ``name``, creating it (and its parents) if needed."""
        return self.file.require_group(name)

    def table(self, name: str, columns: dict[str, Any]) -> h5py.Dataset:
        """Write a table (dict of equal-length columns) as one compound dataset."""
        data = columns_to_structured(columns)
        return self._create(name, data)

    def array(self, name: str, array: Any) -> h5py.Dataset:
        """Write a numeric array; large ones are chunked and gzip+shuffle compressed."""
        data = np.asarray(array)
        return self._create(name, data)

    def attrs(self, name: str, values: dict[str, Any]) -> None:
        """Set attributes on group ``name`` ("" or "/" for the root)."""
        target = self.file if name in ("", "/") else self.group(name)
        for key, value in values.items():
            target.attrs[key] = to_attr(value)

    def _create(self, name: str, data: np.ndarray) -> h5py.Dataset:
        parent, _, leaf = name.rpartition("/")
        group = self.group(parent) if parent else self.file
        if leaf in group:
            del group[leaf]
        kwargs: dict[str, Any] = {}
        if data.size > CHUNK_THRESHOLD and data.ndim > 0:
            kwargs = {"chunks": True, "compression": "gzip", "compression_opts": 4, "shuffle": True}
        return group.create_dataset(leaf, data=data, **kwargs)
