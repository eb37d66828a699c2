"""The HDF5 results store: round trips, atomic writes, clear errors on foreign files."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest

from mechdiff.errors import InputError
from mechdiff.store import (
    SCHEMA_VERSION,
    ResultsWriter,
    check_output_path,
    open_results,
)


@dataclasses.dataclass(frozen=True)
class _Cfg:
    k: int = 3
    name: str = "x"


def test_round_trip_of_tables_arrays_and_attrs(tmp_path):
    out = tmp_path / "r.h5"
    big = np.arange(200_000, dtype=np.float32).reshape(400, 500)
    with ResultsWriter(out, command="mechdiff test", inputs={"base": "a", "ft": "b"}, fingerprints={"base": "f00"}) as w:
        w.table("weights/changes", {"tensor": ["a.weight", "ünï"], "score": np.array([0.5, 0.25]),
                                    "rank": [1, 0], "vec": np.ones((2, 3))})
        w.array("weights/big", big)
        w.attrs("weights", {"config": _Cfg(), "warnings": ["w1"], "x": 1.5, "none": None})
    with open_results(out) as res:
        table = res.weights.table("changes")
        assert list(table["tensor"]) == ["a.weight", "ünï"] and table["rank"].tolist() == [1, 0]
        assert table["vec"].shape == (2, 3)
        assert res.weights.attrs == {"config": {"k": 3, "name": "x"}, "warnings": ["w1"], "x": 1.5, "none": None}
        ds = res.weights.array("big")
        assert ds.compression == "gzip" and ds.chunks is not None  # large arrays compressed lazily
        np.testing.assert_array_equal(ds[10:12, :3], big[10:12, :3])
        root = res.attrs
        assert root["schema_version"] == SCHEMA_VERSION and root["base"] == "a" and root["base_fingerprint"] == "f00"
        with pytest.raises(AttributeError, match="no /crosscoder"):
            _ = res.crosscoder


def test_failure_inside_the_writer_keeps_the_previous_result(tmp_path):
    out = tmp_path / "r.h5"
    with ResultsWriter(out, command="first") as w:
        w.attrs("", {"note": "first"})
    with pytest.raises(RuntimeError), ResultsWriter(out, command="second") as w:
        w.attrs("", {"note": "second"})
        raise RuntimeError("crash mid-write")
    assert not (tmp_path / "r.h5.tmp").exists()
    with open_results(out) as res:
        assert res.attrs["note"] == "first"


def test_foreign_newer_and_truncated_files_are_refused(tmp_path):
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(InputError, match="not a mechdiff results file"):
        open_results(tmp_path / "foreign.h5")
    with ResultsWriter(tmp_path / "new.h5", command="x") as w:
        w.attrs("", {"schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(InputError, match="upgrade mechdiff"):
        open_results(tmp_path / "new.h5")
    good = tmp_path / "good.h5"
    with ResultsWriter(good, command="x") as w:
        w.array("weights/a", np.zeros(100_000))
    data = good.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="truncated or corrupt"):
        open_results(tmp_path / "cut.h5")
    with pytest.raises(InputError, match="does not exist"):
        open_results(tmp_path / "missing.h5")


def test_output_path_checks(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        check_output_path(tmp_path / "nope" / "out.h5")
    with pytest.raises(InputError, match="is a folder"):
        check_output_path(tmp_path)
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"x")
    with pytest.raises(InputError, match="overwrite the input"):
        check_output_path(model, [model])
    assert check_output_path(tmp_path / "ok.h5", [model]) == (tmp_path / "ok.h5").resolve()
