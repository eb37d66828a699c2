"""SPD checkpoints: a run stopped midway and resumed runs only the remaining steps and ends exactly
where an uninterrupted run does."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mechdiff.errors import InputError
from mechdiff.training import Checkpointing
from mechdiff.weightdecomp.spd.trainer import SPDTrainer
from mechdiff.weightdecomp.toys.recipes import TOY_CONFIGS, run_toy


def _config(steps: int = 40):
    return dataclasses.replace(TOY_CONFIGS["tms-5-2"], steps=steps, eval_batches=2)


def _record_steps(monkeypatch) -> list[int]:
    """The step index of every optimizer step the SPD trainer takes from now on."""
    steps: list[int] = []
    step = SPDTrainer.step

    def recording(self, batch, index):
        steps.append(index)
        return step(self, batch, index)

    monkeypatch.setattr(SPDTrainer, "step", recording)
    return steps


def test_stop_then_resume_runs_the_remaining_steps_and_equals_uninterrupted(tmp_path, monkeypatch):
    whole = run_toy("tms-5-2", _config(), progress=False).decomposition
    ckpt = tmp_path / "ckpt"
    steps = _record_steps(monkeypatch)
    run_toy("tms-5-2", _config(), progress=False, checkpointing=Checkpointing(ckpt, every=10, stop_after=25))
    assert steps == list(range(25))
    assert (ckpt / "latest.json").exists() and (ckpt / "step-00000020").is_dir()
    steps.clear()
    resumed = run_toy("tms-5-2", _config(), progress=False,
                      checkpointing=Checkpointing(ckpt, every=10, resume=True)).decomposition
    assert steps == list(range(25, 40))  # a restart from 0 would give the same weights after 40 steps
    for name, module in whole.modules.items():
        np.testing.assert_array_equal(resumed.modules[name].U_CO, module.U_CO)
        np.testing.assert_array_equal(resumed.modules[name].V_IC, module.V_IC)
    assert [h["step"] for h in resumed.history] == [h["step"] for h in whole.history]


def test_resume_with_another_config_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    run_toy("tms-5-2", _config(), progress=False, checkpointing=Checkpointing(ckpt, every=10, stop_after=10))
    with pytest.raises(InputError, match="different SPD config"):
        run_toy("tms-5-2", _config(steps=50), progress=False, checkpointing=Checkpointing(ckpt, resume=True))


def test_resume_on_another_device_is_refused(tmp_path):
    import json

    ckpt = tmp_path / "ckpt"
    run_toy("tms-5-2", _config(), progress=False, checkpointing=Checkpointing(ckpt, every=10, stop_after=10))
    state = ckpt / "step-00000010" / "state.json"
    meta = json.loads(state.read_text())
    assert meta["device"] == "cpu"
    state.write_text(json.dumps({**meta, "device": "cuda"}))  # as a GPU run would have written it
    with pytest.raises(InputError, match="trained on cuda; resume it with --device cuda"):
        run_toy("tms-5-2", _config(), progress=False, checkpointing=Checkpointing(ckpt, resume=True))
