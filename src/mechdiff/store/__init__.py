"""The one self-describing HDF5 results file: schema, atomic writer, reader.

``open_results`` here reads the parts registered so far; :func:`mechdiff.open_results`
first imports every lens package's part, so use that one.
"""

from mechdiff.store.protocol import PartWriter
from mechdiff.store.reader import Part, Results, open_results, register_part
from mechdiff.store.schema import SCHEMA_VERSION
from mechdiff.store.writer import ResultsWriter, check_output_path

__all__ = [
    "SCHEMA_VERSION",
    "Part",
    "PartWriter",
    "Results",
    "ResultsWriter",
    "check_output_path",
    "open_results",
    "register_part",
]
