"""The one self-describing HDF5 results file: schema, atomic writer, reader."""

from mechdiff.store.reader import Part, Results, open_results, register_part
from mechdiff.store.schema import SCHEMA_VERSION
from mechdiff.store.writer import ResultsWriter, check_output_path

__all__ = [
    "SCHEMA_VERSION",
    "Part",
    "Results",
    "ResultsWriter",
    "check_output_path",
    "open_results",
    "register_part",
]
