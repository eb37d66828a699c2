"""SPD checkpoints: a run stopped midway and resumed ends exactly where an uninterrupted run does."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mechdiff.errors import InputError
from mechdiff.weightdecomp.spd.checkpoint import Checkpointing
from mechdiff.weightdecomp.toys.recipes import TOY_CONFIGS, run_toy


def _config(steps: int = 40):
    return dataclasses.replace(TOY_CONFIGS["tms-5-2"], steps=steps, eval_batches=2)


def test_stop_then_resume_equals_uninterrupted(tmp_path):
    whole = run_toy("tms-5-2", _config(), progress=False).decomposition
    ckpt = tmp_path / "ckpt"
    run_toy("tms-5-2", _config(), progress=False, checkpointing=Checkpointing(ckpt, every=10, stop_after=25))
    assert (ckpt / "latest.json").exists() and (ckpt / "step-00000020").is_dir()
    resumed = run_toy("tms-5-2", _config(), progress=False,
                      checkpointing=Checkpointing(ckpt, every=10, resume=True)).decomposition
    for name, module in whole.modules.items():
        np.testing.assert_array_equal(resumed.modules[name].U_CO, module.U_CO)
        np.testing.assert_array_equal(resumed.modules[name].V_IC, module.V_IC)
    assert [h["step"] for h in resumed.history] == [h["step"] for h in whole.history]


def test_resume_with_another_config_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    run_toy("tms-5-2", _config(), progress=False, checkpointing=Checkpointing(ckpt, every=10, stop_after=10))
    with pytest.raises(InputError, match="different SPD config"):
        run_toy("tms-5-2", _config(steps=50), progress=False, checkpointing=Checkpointing(ckpt, resume=True))
