"""--device (default auto), --seed and --dtype on the commands that run models or train, and where they arrive."""

from __future__ import annotations

import sys

import h5py
import numpy as np
import pytest
import torch
from ckpt_builders import tiny_gpt2_lm
from click.testing import CliRunner

from mechdiff.cli import main


def _params(command: str) -> dict:
    return {p.name: p for p in main.commands[command].params}


@pytest.mark.parametrize("command", ["audit", "crosscoder", "demo", "decompose"])
def test_model_running_commands_take_seed_and_device_auto(command):
    params = _params(command)
    assert "seed" in params
    assert params["device"].default == "auto" and set(params["device"].type.choices) == {"auto", "cpu", "cuda"}
    if command in ("audit", "crosscoder", "decompose"):
        assert set(params["dtype"].type.choices) == {"float32", "bfloat16", "float16"}
        assert params["dtype"].default == "float32"


def test_audit_options_reach_every_lens(monkeypatch, tmp_path):
    import mechdiff.api

    seen = {}

    def audit_checkpoints(base, ft, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt  # stop before any work; exits 130

    monkeypatch.setattr(mechdiff.api, "audit_checkpoints", audit_checkpoints)
    result = CliRunner().invoke(main, ["audit", str(tmp_path), str(tmp_path), "--device", "cpu", "--seed", "7",
                                       "--dtype", "bfloat16"])
    assert result.exit_code == 130, result.output
    config = seen["config"]
    assert (config.seed, config.dtype, config.behaviour.device, config.diff.device) == (7, "bfloat16", "cpu", "cpu")


def test_auto_puts_the_models_on_the_gpu_when_there_is_one(monkeypatch):
    from mechdiff.diffing.audit.run_options import audit_config
    from mechdiff.errors import UsageError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert audit_config("auto").behaviour.device == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert audit_config("auto").behaviour.device == "cpu"
    with pytest.raises(UsageError, match="no CUDA GPU"):
        audit_config("cuda")


def test_crosscoder_device_and_seed_reach_training(monkeypatch, toy_backdoor):
    from mechdiff.diffing.crosscoder import pipeline

    seen = {}

    def train_crosscoder(data, config, **kwargs):
        seen.update(kwargs, seed=config.seed)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "train_crosscoder", train_crosscoder)
    result = CliRunner().invoke(main, ["crosscoder", str(toy_backdoor.base_dir), str(toy_backdoor.ft_dir), "--data",
                                       str(toy_backdoor.corpus_path), "--layer", "1", "--tokens", "512",
                                       "--seed", "5", "--no-progress"])
    assert result.exit_code == 130, result.output
    assert seen["device"] == ("cuda" if torch.cuda.is_available() else "cpu") and seen["seed"] == 5


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    """A tiny GPT-2 with room for decompose's 8 x 64-token batches."""
    return tiny_gpt2_lm(tmp_path_factory.mktemp("lm"), n_positions=64, n_words=1200)


def _decompose(folder, out, *options):
    args = ["decompose", str(folder), "--modules", "transformer.h.0.mlp.c_fc", "--data", str(folder / "data.txt"),
            "--steps", "4", "--components", "3", "--seed", "3", "--no-progress", "--json", "-o", str(out), *options]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["mechdiff", *args])  # the command line the results file records
        return CliRunner().invoke(main, args)


def _components(path) -> dict[str, np.ndarray]:
    arrays = {}
    with h5py.File(path, "r") as f:
        f["components"].visititems(lambda name, obj: arrays.update({name: obj[()]})
                                   if isinstance(obj, h5py.Dataset) else None)
    return arrays


def test_decompose_device_cpu_gives_the_numbers_of_no_flag_on_a_machine_without_gpu(lm_folder, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # auto is then the CPU, on any machine
    plain, cpu = _decompose(lm_folder, tmp_path / "plain.h5"), _decompose(lm_folder, tmp_path / "cpu.h5", "--device",
                                                                          "cpu")
    assert plain.exit_code == 0 and cpu.exit_code == 0, plain.output + cpu.output
    first, second = _components(tmp_path / "plain.h5"), _components(tmp_path / "cpu.h5")
    assert "transformer.h.0.mlp.c_fc/U" in first and first.keys() == second.keys()
    for name, values in first.items():
        np.testing.assert_array_equal(second[name], values, err_msg=name)


@pytest.mark.parametrize("how", [["LM"], ["--toy", "tms-5-2"]])
def test_decompose_device_cuda_without_gpu_is_one_line_and_the_audits_exit_code(how, lm_folder, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out.h5"
    if how == ["LM"]:
        result = _decompose(lm_folder, out, "--device", "cuda")
    else:
        result = CliRunner().invoke(main, ["decompose", *how, "--device", "cuda", "-o", str(out)])
    audit = CliRunner().invoke(main, ["audit", str(lm_folder), str(lm_folder), "--device", "cuda"])
    assert result.exit_code == audit.exit_code == 2  # a usage error, as DESIGN.md's exit codes say
    assert result.stderr.strip() == audit.stderr.strip() == (
        "mechdiff: error: --device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    assert result.stdout == "" and not out.exists()


def test_decompose_bfloat16_runs_the_model_in_bf16_and_records_it(lm_folder, tmp_path):
    import json

    from mechdiff.results import open_results

    out = tmp_path / "bf16.h5"
    result = _decompose(lm_folder, out, "--dtype", "bfloat16", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model_dtype"] == "bfloat16"
    with open_results(out) as res:
        assert res.components.attrs["model_dtype"] == "bfloat16"
        assert "--dtype bfloat16" in res.attrs["command"]  # what the audit records of its dtype
        assert res.components.U("transformer.h.0.mlp.c_fc").dtype == np.float32  # components: float32
        assert np.isfinite(res.components.V("transformer.h.0.mlp.c_fc")).all()
    assert _decompose(lm_folder, tmp_path / "f32.h5").exit_code == 0
    with open_results(tmp_path / "f32.h5") as res:
        assert res.components.attrs["model_dtype"] == "float32"


def test_decompose_toy_takes_device_but_runs_in_float32_only(tmp_path):
    out = tmp_path / "toy.h5"
    result = CliRunner().invoke(main, ["decompose", "--toy", "tms-5-2", "--steps", "20", "--device", "cpu",
                                       "--no-progress", "--json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    with h5py.File(out, "r") as f:
        assert f["components"].attrs["model_dtype"] == "float32"
    result = CliRunner().invoke(main, ["decompose", "--toy", "tms-5-2", "--dtype", "bfloat16"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "mechdiff: error: --dtype bfloat16 applies to MODEL; the toy models run in float32"
