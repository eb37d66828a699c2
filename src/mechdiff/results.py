"""``mechdiff.open_results``: a results file whose parts are the lens packages' own part types.

Importing a lens package's ``part`` module registers its part with the store; this
module imports every one of them, so the store never names a lens.
"""

from __future__ import annotations

import os

from mechdiff.diffing.audit import part as _audit_part
from mechdiff.diffing.crosscoder import part as _crosscoder_part
from mechdiff.diffing.weights import part as _weights_part
from mechdiff.store.reader import Results
from mechdiff.store.reader import open_results as _read
from mechdiff.weightdecomp.spd import part as _components_part

PART_TYPES = {
    "weights": _weights_part.WeightsPart,
    "audit": _audit_part.AuditPart,
    "crosscoder": _crosscoder_part.CrosscoderPart,
    "components": _components_part.ComponentsPart,
}
"""Part name -> its type (each registered by its own package on import)."""


def open_results(path: str | os.PathLike) -> Results:
    """Open a results file written by mechdiff.

    Args:
        path: an ``.h5`` file written by ``mechdiff diff/crosscoder/decompose/audit``.

    Returns:
        A :class:`~mechdiff.store.Results`: ``r.weights``, ``r.audit``, ``r.crosscoder``,
        ``r.components`` (those present; ``dir(r)`` lists them) expose tables as numpy
        structured arrays, ``.to_pandas(table)``, big arrays lazily, and ``r.findings()``.

    Raises:
        InputError: the file is missing, truncated, not HDF5, not a mechdiff
            file, or written by a newer mechdiff schema.
    """
    return _read(path)
