"""Reading mechdiff results files back: typed parts over the HDF5 groups."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from mechdiff.errors import InputError
from mechdiff.store.schema import (
    MAGIC_ATTR,
    SCHEMA_VERSION,
    decode_structured,
    from_attr,
)

if TYPE_CHECKING:  # typing.Self is 3.11+; annotations are never evaluated (python_requires >= 3.10)
    from typing import Self

_PART_CLASSES: dict[str, type[Part]] = {}


def register_part(name: str, cls: type[Part]) -> None:
    """Make ``Results.part(name)`` return an instance of ``cls`` (a Part subclass).

    Each lens package registers its part when its ``part`` module is imported;
    :func:`mechdiff.open_results` imports all of them (``mechdiff.results``).
    """
    _PART_CLASSES[name] = cls


class Part:
    """One analysis group of a results file (``/weights``, ``/crosscoder``, ...)."""

    def __init__(self, results: Results, name: str, group: h5py.Group) -> None:
        self.results = results
        self.name = name
        self.group = group

    @property
    def attrs(self) -> dict[str, Any]:
        """The group's attributes, JSON-valued ones decoded."""
        return {key: from_attr(value) for key, value in self.group.attrs.items()}

    def keys(self) -> list[str]:
        """Names of the tables, arrays and sub-groups in this part."""
        return list(self.group.keys())

    def __contains__(self, name: str) -> bool:
        return name in self.group

    def table(self, name: str) -> np.ndarray:
        """A table as a numpy structured array with ``str`` columns decoded."""
        return decode_structured(self._dataset(name)[()])

    def array(self, name: str) -> h5py.Dataset:
        """A big array, lazily: slice it or ``np.asarray`` it to read."""
        return self._dataset(name)

    def to_pandas(self, name: str) -> Any:
        """A table as a pandas DataFrame (needs pandas); lists and shapes as Python values.

        Args:
            name: a table of this part (see :meth:`keys`).

        Returns:
            One row per table row; a part may turn stored text back into values
            (token lists as lists, shapes as tuples), see :meth:`pandas_column`.
        """
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise InputError("to_pandas() needs pandas: pip install pandas") from exc
        table = self.table(name)
        return pd.DataFrame({col: self.pandas_column(name, col, table[col]) for col in table.dtype.names})

    def pandas_column(self, table: str, column: str, values: np.ndarray) -> Any:
        """One stored column as the values a DataFrame shows (parts override it for their columns)."""
        return _column_for_pandas(values)

    def _dataset(self, name: str) -> h5py.Dataset:
        if name not in self.group:
            raise KeyError(f"/{self.name} has no '{name}'; it has: {', '.join(self.keys())}")
        return self.group[name]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} /{self.name}: {', '.join(self.keys())}>"


def _column_for_pandas(column: np.ndarray) -> Any:
    return list(column) if column.ndim > 1 else column


class Results:
    """An open mechdiff results file. Use as a context manager or call ``close()``.

    Each analysis that ran is a part, reachable as an attribute (``r.weights``,
    ``r.audit``, ...; ``dir(r)`` lists the ones this file holds) or with
    :meth:`part`. ``hasattr(r, "audit")`` is False on a file without an audit.
    """

    def __init__(self, path: Path, file: h5py.File) -> None:
        self.path = path
        self.file = file

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes: schema_version, mechdiff_version, created, command, inputs, fingerprints."""
        return {key: from_attr(value) for key, value in self.file.attrs.items() if key != MAGIC_ATTR}

    @property
    def schema_version(self) -> int:
        """The results schema this file was written with."""
        return schema_version_of(self.file)

    @property
    def parts(self) -> list[str]:
        """Names of the parts (analysis groups) this file holds."""
        return [name for name in self.file if isinstance(self.file[name], h5py.Group)]

    def part(self, name: str) -> Part:
        """One part by name; a KeyError names the parts the file has."""
        if name not in self.file or not isinstance(self.file[name], h5py.Group):
            have = ", ".join(self.parts) or "nothing"
            raise KeyError(f"{self.path} has no /{name} results (it has: {have})")
        cls = _PART_CLASSES.get(name, Part)
        return cls(self, name, self.file[name])

    def findings(self) -> list[dict[str, Any]]:
        """The audit's ranked findings as dicts (rank, method, score, summary, location, evidence, ...).

        Raises:
            AttributeError: the file holds no audit.
        """
        return self.__getattr__("audit").findings()

    def __getattr__(self, name: str) -> Part:
        if name.startswith("_") or name in ("path", "file"):
            raise AttributeError(name)
        try:
            return self.part(name)
        except KeyError as exc:
            raise AttributeError(exc.args[0]) from None

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.parts))

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Results {self.path}: {', '.join(self.parts)}>"


def open_results(path: str | os.PathLike) -> Results:
    """Open a results file written by mechdiff.

    Args:
        path: an ``.h5`` file written by ``mechdiff diff/crosscoder/decompose/audit``.

    Returns:
        A :class:`Results` whose parts expose tables as structured arrays.

    Raises:
        InputError: the file is missing, truncated, not HDF5, not a mechdiff
            file, or written by a newer mechdiff schema.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"results file {path} does not exist")
    try:
        file = h5py.File(p, "r")
    except OSError as exc:
        raise InputError(f"{path} is not a readable HDF5 file (truncated or corrupt?): {exc}") from exc
    try:
        _check_header(p, file)
    except InputError:
        file.close()
        raise
    return Results(p, file)


def schema_version_of(file: h5py.File) -> int:
    """The schema version of an open file (files before 0.1 also carried it as ``mechdiff_schema``)."""
    for name in ("schema_version", MAGIC_ATTR):
        if name in file.attrs:
            return int(from_attr(file.attrs[name]))
    return -1


def _check_header(path: Path, file: h5py.File) -> None:
    ours = MAGIC_ATTR in file.attrs or {"schema_version", "mechdiff_version"} <= set(file.attrs)
    if not ours:
        raise InputError(f"{path} is an HDF5 file but not a mechdiff results file")
    version = schema_version_of(file)
    if version > SCHEMA_VERSION:
        raise InputError(
            f"{path} uses results schema {version}, newer than this mechdiff understands "
            f"({SCHEMA_VERSION}); upgrade mechdiff to read it"
        )
