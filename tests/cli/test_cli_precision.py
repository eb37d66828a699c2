"""--precision on crosscoder and audit: where it arrives, --dtype bfloat16 under auto, errors, resume."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from mechdiff.cli import main


@pytest.fixture(autouse=True)
def _no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "auto" is the CPU on any machine


def _crosscoder(pair, *options):
    return CliRunner().invoke(main, ["crosscoder", str(pair.base_dir), str(pair.ft_dir), "--data",
                                     str(pair.corpus_path), "--layer", "1", "--tokens", "512", "--no-progress",
                                     *map(str, options)])


@pytest.mark.parametrize(("options", "trains_in"), [
    ([], "fp32"),
    (["--dtype", "bfloat16"], "bf16"),  # auto follows the models' dtype
    (["--dtype", "bfloat16", "--precision", "fp32"], "fp32"),  # unless the user says otherwise
    (["--precision", "bf16"], "bf16"),
])
def test_precision_reaches_training(monkeypatch, toy_backdoor, options, trains_in):
    from mechdiff.diffing.crosscoder import pipeline, precision

    seen = {}

    def train_crosscoder(data, config, **kwargs):
        seen["precision"] = precision.resolve_precision(config.precision, kwargs["device"])
        raise KeyboardInterrupt  # stop before any training

    monkeypatch.setattr(pipeline, "train_crosscoder", train_crosscoder)
    result = _crosscoder(toy_backdoor, *options)
    assert result.exit_code == 130, result.output
    assert seen["precision"] == trains_in


def test_audit_passes_precision_to_its_crosscoder(monkeypatch, tmp_path):
    import mechdiff.api
    from mechdiff.diffing.audit.lenses import _crosscoder_overrides

    seen = {}

    def audit_checkpoints(base, ft, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(mechdiff.api, "audit_checkpoints", audit_checkpoints)
    for options, want in ((["--precision", "bf16"], "bf16"), (["--dtype", "bfloat16"], "bf16"), ([], "auto")):
        result = CliRunner().invoke(main, ["audit", str(tmp_path), str(tmp_path), "--device", "cpu", *options])
        assert result.exit_code == 130, result.output
        assert _crosscoder_overrides(seen["config"])["precision"] == want


def test_an_unknown_precision_is_a_usage_error():
    result = CliRunner().invoke(main, ["crosscoder", "a", "b", "--data", "c", "--layer", "0", "--precision", "fp16"])
    assert result.exit_code == 2 and "'fp16' is not one of 'auto', 'fp32', 'tf32', 'bf16'" in result.output


@pytest.mark.parametrize("command", ["crosscoder", "audit"])
def test_tf32_on_the_cpu_is_one_line_before_any_work(command, toy_backdoor):
    args = [str(toy_backdoor.base_dir), str(toy_backdoor.ft_dir), "--data", str(toy_backdoor.corpus_path)]
    if command == "crosscoder":
        args += ["--layer", "1"]
    result = CliRunner().invoke(main, [command, *args, "--precision", "tf32", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 2, result.output  # a usage error, as DESIGN.md's exit codes say
    assert result.stderr.strip() == ("mechdiff: error: precision tf32 is a CUDA matmul mode; on device cpu use fp32 "
                                     "or bf16")
    assert result.stdout == ""


def test_resume_under_another_precision_is_refused_in_one_line(toy_backdoor, tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.h5"
    first = _crosscoder(toy_backdoor, "--checkpoint-dir", ckpt, "--json", "-o", out)
    assert first.exit_code == 0, first.output
    from mechdiff.results import open_results

    with open_results(out) as res:
        assert res.crosscoder.attrs["config"]["precision"] == "fp32"  # what ran, not "auto"
    again = _crosscoder(toy_backdoor, "--checkpoint-dir", ckpt, "--resume", "--precision", "bf16")
    assert again.exit_code == 3, again.output  # incompatible input: the checkpoint's run was fp32
    assert len(again.stderr.strip().splitlines()) == 1
    assert "precision: 'fp32' there, 'bf16' now" in again.stderr
