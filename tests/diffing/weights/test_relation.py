"""`mechdiff diff` tells identical models and unrelated models apart from a fine-tune (issue #16 item 7)."""

from __future__ import annotations

import json

import pytest
from ckpt_builders import LLAMA_CONFIG, drift, llama_state, save_folder
from click.testing import CliRunner

from mechdiff.cli import main

UNRELATED = "does not look like a fine-tune of BASE"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("relation")
    state = llama_state(0)
    return {"base": save_folder(root / "base", state, LLAMA_CONFIG),
            "ft": save_folder(root / "ft", drift(state, 0.3), LLAMA_CONFIG),  # a heavy fine-tune: cosine ~0.96
            "other": save_folder(root / "other", llama_state(1), LLAMA_CONFIG)}  # same shapes, fresh init


def _diff(*args):
    return CliRunner().invoke(main, ["diff", *map(str, args), "--no-progress"])


def test_identical_models_are_called_identical(folders):
    result = _diff(folders["base"], folders["base"])
    assert result.exit_code == 0, result.output
    assert "The models are identical: all 21 tensors have the same values." in result.stdout
    assert "drift" not in result.stdout
    doc = json.loads(_diff(folders["base"], folders["base"], "--json").stdout)
    assert doc["relation"] == "identical" and not doc["warnings"]


def test_an_unrelated_model_of_the_same_shape_is_flagged(folders):
    result = _diff(folders["base"], folders["other"])
    assert result.exit_code == 0, result.output
    assert UNRELATED in result.stdout
    doc = json.loads(_diff(folders["base"], folders["other"], "--json").stdout)
    assert doc["relation"] == "unrelated" and UNRELATED in doc["warnings"][0]


def test_a_heavy_fine_tune_is_neither(folders, tmp_path):
    out = tmp_path / "d.h5"
    result = _diff(folders["base"], folders["ft"], "-o", out)
    assert result.exit_code == 0 and UNRELATED not in result.stdout and "identical" not in result.stdout
    assert "0 unchanged" in result.stdout
    shown = CliRunner().invoke(main, ["show", str(out), "--json"])
    assert json.loads(shown.stdout)["weights"]["relation"] == "fine-tune"
