"""The results API a notebook uses (issue #16 item 12): attributes, dir(), findings(), pandas, one schema version."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from ckpt_builders import GPT2_CONFIG, drift, gpt2_state, low_rank, save_folder

import mechdiff
from mechdiff.api import audit_checkpoints, diff_checkpoints
from mechdiff.results import PART_TYPES
from mechdiff.store import Part, ResultsWriter
from mechdiff.store.reader import _PART_CLASSES

FC = "transformer.h.1.mlp.c_fc.weight"  # GPT-2 Conv1D: stored [in 64, out 256]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    state = gpt2_state(0)
    ft = drift(state, 0.01)
    ft[FC] = ft[FC] + low_rank(tuple(state[FC].shape), 1, 0.1 * float(state[FC].norm()))
    base, ft_dir = save_folder(root / "base", state, GPT2_CONFIG), save_folder(root / "ft", ft, GPT2_CONFIG)
    diff_checkpoints(base, ft_dir, out=root / "diff.h5", progress=False)
    audit_checkpoints(base, ft_dir, out=root / "audit.h5", progress=False)
    return root / "diff.h5", root / "audit.h5"


def test_public_names_and_parts_are_discoverable(files):
    assert {"open_results", "diff_checkpoints", "ResultsWriter", "audit_checkpoints"} <= set(dir(mechdiff))
    assert "Any" not in dir(mechdiff) and "annotations" not in dir(mechdiff)
    assert mechdiff.open_results.__doc__ and mechdiff.diff_checkpoints.__doc__
    with mechdiff.open_results(files[0]) as r:
        assert {"weights", "heads"} <= set(dir(r)) and "audit" not in dir(r)
        assert hasattr(r, "weights") and not hasattr(r, "audit") and not hasattr(r, "crosscoder")
        with pytest.raises(AttributeError, match="has no /audit"):
            r.findings()
        assert type(r.weights).__doc__ and r.weights.diff().changes[0].tensor == FC


def test_every_part_type_is_registered_by_its_package():
    for name, cls in PART_TYPES.items():
        assert _PART_CLASSES[name] is cls and issubclass(cls, Part)


def test_findings_and_pandas_columns_hold_python_values(files):
    pytest.importorskip("pandas")
    with mechdiff.open_results(files[1]) as r:
        findings = r.findings()
        assert findings[0]["rank"] == 1 and findings[0]["location"]["tensor"] == FC
        assert r.audit.verdict in ("pass", "findings")
        frame = r.weights.to_pandas("changes")
        row = frame[frame["tensor"] == FC].iloc[0]
        assert row["shape"] == (256, 64)  # [out, in], not storage order
        assert isinstance(row["tokens_in"], list)
        audit = r.audit.to_pandas("findings")
        assert isinstance(audit["tokens"][0], list) and isinstance(audit["evidence"][0], dict)


def test_one_schema_version_attribute_and_old_files_still_open(files, tmp_path):
    with mechdiff.open_results(files[0]) as r:
        assert r.schema_version == 1 and r.attrs["schema_version"] == 1
        assert "mechdiff_schema" not in r.attrs
    with h5py.File(files[0], "r") as f:
        assert "mechdiff_schema" not in f.attrs
    old = tmp_path / "old.h5"
    with ResultsWriter(old, command="mechdiff diff a b") as w:
        w.table("weights/changes", {"tensor": ["x"], "score": np.array([0.5])})
    with h5py.File(old, "a") as f:  # what 0.1 wrote: both attributes
        f.attrs["mechdiff_schema"] = 1
    with mechdiff.open_results(old) as r:
        assert r.schema_version == 1 and r.part("weights").table("changes")["tensor"][0] == "x"


def test_the_results_writer_is_a_part_writer(tmp_path):
    from mechdiff.store import PartWriter

    with ResultsWriter(tmp_path / "w.h5", command="x") as writer:
        assert isinstance(writer, PartWriter)


def test_the_store_names_no_lens(tmp_path):
    """store/ is below the lenses: reading a file through it imports no lens package."""
    import subprocess
    import sys

    code = ("import sys, mechdiff.store as s; r = s.open_results(sys.argv[1]); r.part('weights'); "
            "print(sorted(m for m in sys.modules if m.startswith('mechdiff.diffing') or m.startswith('mechdiff.weightdecomp')))")
    path = tmp_path / "w.h5"
    with ResultsWriter(path, command="x") as w:
        w.table("weights/changes", {"tensor": ["t"], "score": np.array([1.0])})
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
