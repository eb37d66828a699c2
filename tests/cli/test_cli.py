"""The CLI contract: exit codes, one-line errors, JSON on stdout only."""

from __future__ import annotations

import json

import pytest
from ckpt_builders import LLAMA_CONFIG, drift, llama_state, save_folder
from click.testing import CliRunner

from mechdiff.cli import main


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    state = llama_state(0)
    return save_folder(root / "base", state, LLAMA_CONFIG), save_folder(root / "ft", drift(state, 0.01), LLAMA_CONFIG)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_diff_json_and_show_round_trip(pair, tmp_path):
    base, ft = pair
    out = tmp_path / "out.h5"
    result = run("diff", base, ft, "-o", out, "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema_version"] == 1 and len(doc["changes"]) == len(llama_state(0))
    shown = run("show", out, "--json")
    assert shown.exit_code == 0
    assert json.loads(shown.stdout)["weights"]["changes"][0]["tensor"] == doc["changes"][0]["tensor"]
    text = run("show", out, "--top", "3")
    assert "Top changes" in text.stdout and doc["changes"][0]["tensor"] in text.stdout


def _assert_one_line_error(result, code, fragment):
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.output


def test_bad_inputs_exit_3_with_one_line_and_no_output(pair, tmp_path):
    base, _ = pair
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x0a\x00\x00\x00\x00\x00\x00\x00{not json}")
    out = tmp_path / "out.h5"
    _assert_one_line_error(run("diff", base, broken, "-o", out), 3, "not valid JSON")
    assert not out.exists() and not (tmp_path / "out.h5.tmp").exists()
    _assert_one_line_error(run("diff", base, tmp_path / "missing", "-o", out), 3, "does not exist")
    _assert_one_line_error(run("diff", base, base, "-o", tmp_path / "no" / "out.h5"), 3, "does not exist")
    _assert_one_line_error(run("show", broken), 3, "not a readable HDF5")
    other = save_folder(tmp_path / "other", llama_state(0, n_layers=3), {**LLAMA_CONFIG, "num_hidden_layers": 3})
    _assert_one_line_error(run("diff", base, other), 3, "different architectures")


def test_output_may_not_overwrite_an_input(tmp_path):
    from safetensors.torch import save_file

    state = llama_state(0)
    save_file(state, str(tmp_path / "a.safetensors"))
    _assert_one_line_error(run("diff", tmp_path / "a.safetensors", tmp_path / "a.safetensors", "-o",
                               tmp_path / "a.safetensors"), 3, "overwrite the input")


def test_usage_errors_exit_2(pair):
    base, ft = pair
    assert run("diff", base).exit_code == 2
    assert run("diff", base, ft, "--adapter", ft).exit_code == 2
    assert run("diff", base, ft, "--rank", "0").exit_code == 2
    assert run("nonsense").exit_code == 2


def test_decompose_toy_writes_components(tmp_path):
    out = tmp_path / "d.h5"
    result = run("decompose", "--toy", "tms-5-2", "--steps", "50", "--json", "--no-progress", "-o", out)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["name"] == "tms-5-2" and doc["n_components"] == 20 and doc["steps"] == 50
    from mechdiff.results import open_results

    with open_results(out) as res:
        assert len(res.components.table("components")) == 40  # 20 per matrix, two matrices
    assert run("decompose").exit_code == 2
    assert run("decompose", "some_model").exit_code == 2


@pytest.mark.parametrize("command", [["decompose", "--toy", "tms-5-2"],
                                     ["crosscoder", "base", "ft", "--data", "d.txt", "--layer", "0"]])
def test_resume_without_a_checkpoint_dir_is_a_usage_error(command, tmp_path):
    result = run(*command, "--resume", "-o", tmp_path / "out.h5")
    assert result.exit_code == 2 and "--resume needs --checkpoint-dir" in result.output
    assert not (tmp_path / "out.h5").exists()
