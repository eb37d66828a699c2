"""A missing package stops a command before any work: one line, exit 3, no file written, no model built."""

from __future__ import annotations

import sys

import pytest
from ckpt_builders import LLAMA_CONFIG, drift, llama_state, save_folder
from click.testing import CliRunner

from mechdiff.cli import main
from mechdiff.errors import InputError


@pytest.fixture
def no_matplotlib(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError


def test_audit_with_a_report_stops_before_the_diff_when_matplotlib_is_missing(tmp_path, no_matplotlib):
    state = llama_state(0)
    base = save_folder(tmp_path / "base", state, LLAMA_CONFIG)
    ft = save_folder(tmp_path / "ft", drift(state, 0.01), LLAMA_CONFIG)
    result = CliRunner().invoke(main, ["audit", str(base), str(ft), "-o", str(tmp_path / "a.h5"),
                                       "--report", str(tmp_path / "a.html"), "--no-progress"])
    assert result.exit_code == 3, result.output
    assert "matplotlib" in result.stderr and "nothing was done" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "ft"]  # no results, no .tmp left


def test_demo_checks_its_packages_before_training(tmp_path, no_matplotlib):
    from mechdiff.demo import run_demo

    with pytest.raises(InputError, match="matplotlib"):
        run_demo(tmp_path / "demo", progress=False)
    assert not (tmp_path / "demo").exists()


def test_setup_cfg_makes_every_command_work_from_one_install():
    import configparser
    from pathlib import Path

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[2] / "setup.cfg")
    core = {line.split(">")[0].split("=")[0].strip() for line in cfg["options"]["install_requires"].splitlines()
            if line.strip() and not line.strip().startswith("#")}
    assert {"transformers", "matplotlib", "torch", "tokenizers"} <= core
