"""--device (default auto), --seed and --dtype on the commands that run models or train, and where they arrive."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from mechdiff.cli import main


def _params(command: str) -> dict:
    return {p.name: p for p in main.commands[command].params}


@pytest.mark.parametrize("command", ["audit", "crosscoder", "demo", "decompose"])
def test_model_running_commands_take_seed_and_device_auto(command):
    params = _params(command)
    assert "seed" in params
    if command != "decompose":  # SPD trains on the CPU only (see the report)
        assert params["device"].default == "auto" and "auto" in params["device"].type.choices
    if command in ("audit", "crosscoder"):
        assert set(params["dtype"].type.choices) == {"float32", "bfloat16", "float16"}


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
