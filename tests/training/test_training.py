"""mechdiff.training: one save/restore for every trainer, and one lr schedule that gives every
trainer's former schedule's numbers."""

from __future__ import annotations

import math

import pytest
import torch

from mechdiff.diffing.audit.lenses import audit_crosscoder_config
from mechdiff.diffing.crosscoder.config import CrosscoderConfig
from mechdiff.diffing.crosscoder.train import lr_schedule as crosscoder_schedule
from mechdiff.errors import InputError
from mechdiff.toylm.train import STEPS_PRESETS
from mechdiff.toylm.train import lr_schedule as toylm_schedule
from mechdiff.training import (
    Checkpointing,
    LRSchedule,
    latest_checkpoint,
    restore_training,
    save_training,
)
from mechdiff.weightdecomp.spd.config import SPDConfig
from mechdiff.weightdecomp.spd.trainer import lr_schedule as spd_schedule
from mechdiff.weightdecomp.toys.recipes import TOY_CONFIGS

# The three schedules as they were written before they became one (verbatim), the reference.


def old_toylm_lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def old_spd_lr_at(config: SPDConfig, step: int) -> float:
    warmup = int(config.lr_warmup_frac * config.steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.lr_schedule == "constant":
        return config.lr
    progress = (step - warmup) / max(1, config.steps - warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def old_crosscoder_lr_at(step: int, config: CrosscoderConfig) -> float:
    total = config.steps
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    decay_start = total * (1 - config.decay_frac)
    if step < decay_start or config.decay_frac == 0:
        return config.lr * warm
    return config.lr * warm * max(0.0, (total - step) / (total - decay_start))


def _probe_steps(total: int, warmup: int) -> list[int]:
    """Steps where the schedules change shape, and between: start, warm-up edges, middle, decay, end."""
    marks = {0, 1, warmup - 1, warmup, warmup + 1, total // 3, total // 2, int(total * 0.8), int(total * 0.8) + 1,
             int(total * 0.9), total - 2, total - 1}
    return sorted(s for s in marks if 0 <= s < total)


def _same(new: float, old: float) -> None:
    assert new == pytest.approx(old, rel=1e-12, abs=0.0)  # equal up to one rounding of a division order


@pytest.mark.parametrize("preset", sorted(STEPS_PRESETS))
def test_toylm_schedule_equals_the_former_one_for_every_preset(preset: str) -> None:
    steps = STEPS_PRESETS[preset]
    for total, peak in ((steps.base_steps, steps.base_lr), (steps.ft_steps, steps.ft_lr), (steps.ft_steps, steps.lora_lr)):
        schedule = toylm_schedule(total, steps.warmup, peak)
        for step in _probe_steps(total, steps.warmup):
            _same(schedule.at(step), old_toylm_lr_at(step, total, steps.warmup, peak))


def _spd_configs() -> list[SPDConfig]:
    configs = [SPDConfig(), *TOY_CONFIGS.values()]
    # the options a user can change: warm-up and a constant schedule
    configs += [SPDConfig.from_dict({**c.to_dict(), "lr_warmup_frac": 0.1, "lr_schedule": s})
                for c in configs[:2] for s in ("cosine", "constant")]
    return configs


@pytest.mark.parametrize("index", range(len(_spd_configs())))
def test_spd_schedule_equals_the_former_one_for_every_config(index: int) -> None:
    config = _spd_configs()[index]
    schedule = spd_schedule(config)
    for step in _probe_steps(config.steps, int(config.lr_warmup_frac * config.steps)):
        _same(schedule.at(step), old_spd_lr_at(config, step))


def _crosscoder_configs() -> list[CrosscoderConfig]:
    sized = [audit_crosscoder_config(d, n) for d, n in ((64, 20_000), (768, 1_000_000), (2048, 50_000_000))]
    edge = [CrosscoderConfig(lr=1.0, warmup_steps=10, decay_frac=f, batch=1, tokens=100) for f in (0.0, 0.2, 1.0)]
    return [CrosscoderConfig(), *sized, *edge, CrosscoderConfig(warmup_steps=0, batch=64, tokens=64 * 7)]


@pytest.mark.parametrize("index", range(len(_crosscoder_configs())))
def test_crosscoder_schedule_equals_the_former_one_for_every_config(index: int) -> None:
    config = _crosscoder_configs()[index]
    schedule = crosscoder_schedule(config)
    for step in _probe_steps(config.steps, config.warmup_steps):
        _same(schedule.at(step), old_crosscoder_lr_at(step, config))


def test_schedule_by_hand() -> None:
    # 10 steps, warm-up 2, cosine to 10% from step 2: step 0 -> 0.5, 1 -> 1, 6 (halfway) -> 0.1 + 0.9 / 2
    schedule = LRSchedule(1.0, 10, 2, "cosine", floor=0.1)
    assert [schedule.at(s) for s in (0, 1)] == [0.5, 1.0]
    assert schedule.at(6) == pytest.approx(0.55)
    linear = LRSchedule(2.0, 10, 0, "linear", decay_start=5.0)
    assert [linear.at(s) for s in (4, 5, 8)] == [2.0, 2.0, pytest.approx(0.8)]
    with pytest.raises(ValueError, match="decay"):
        LRSchedule(1.0, 10, decay="exponential")


def _trainer(seed: int) -> tuple[dict[str, torch.nn.Module], torch.optim.Optimizer]:
    torch.manual_seed(seed)
    modules = {"enc": torch.nn.Linear(3, 2), "dec": torch.nn.Linear(2, 3, bias=False)}
    optimizer = torch.optim.Adam([p for m in modules.values() for p in m.parameters()], lr=0.1)
    loss = modules["dec"](modules["enc"](torch.randn(4, 3))).pow(2).sum()
    loss.backward()
    optimizer.step()  # Adam now holds moments to restore
    return modules, optimizer


def test_save_then_restore_round_trips_modules_optimizer_extras_and_meta(tmp_path) -> None:
    modules, optimizer = _trainer(0)
    counter = torch.tensor([3, 0, 7])
    save_training(tmp_path, 5, modules=modules, optimizer=optimizer, config={"lr": 0.1},
                  tensors={"counter": counter}, meta={"history": [{"step": 5, "loss": 1.5}]})
    fresh, fresh_opt = _trainer(1)  # different weights and moments before the restore
    restored = restore_training(tmp_path, modules=fresh, optimizer=fresh_opt, config={"lr": 0.1}, what="toy")
    assert restored.step == 5 and restored.meta == {"history": [{"step": 5, "loss": 1.5}]}
    assert list(restored.tensors) == ["counter"] and restored.tensors["counter"].tolist() == [3, 0, 7]
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            torch.testing.assert_close(fresh[name].state_dict()[key], value, rtol=0, atol=0)
    old_state, new_state = optimizer.state_dict()["state"], fresh_opt.state_dict()["state"]
    for pid, slots in old_state.items():
        for slot, value in slots.items():
            torch.testing.assert_close(new_state[pid][slot], value, rtol=0, atol=0)


def test_restore_without_a_checkpoint_is_none_and_refuses_another_config(tmp_path) -> None:
    modules, optimizer = _trainer(0)
    assert restore_training(tmp_path, modules=modules, optimizer=optimizer, config={}, what="toy") is None
    save_training(tmp_path, 1, modules=modules, optimizer=optimizer, config={"k": 2})
    with pytest.raises(InputError, match="different toy config"):
        restore_training(tmp_path, modules=modules, optimizer=optimizer, config={"k": 3}, what="toy")


def test_only_the_newest_two_checkpoints_are_kept(tmp_path) -> None:
    modules, optimizer = _trainer(0)
    for step in (1, 2, 3):
        save_training(tmp_path, step, modules=modules, optimizer=optimizer, config={})
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000002", "step-00000003"]
    assert latest_checkpoint(tmp_path).name == "step-00000003"


def test_checkpointing_saves_every_n_steps_and_where_it_stops(tmp_path) -> None:
    plan = Checkpointing(tmp_path, every=4, stop_after=7)
    last = plan.last_step(12)
    assert last == 7 and [s for s in range(1, last + 1) if plan.due(s, last)] == [4, 7]
    assert Checkpointing(tmp_path).last_step(12) == 12
    with pytest.raises(ValueError, match="every"):
        Checkpointing(tmp_path, every=-1)
