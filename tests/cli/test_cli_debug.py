"""--debug adds a traceback and changes nothing else: exit codes 2/3/130 stay, accepted after the command too."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mechdiff.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_keeps_exit_code_3_and_shows_the_traceback(tmp_path, where):
    missing = tmp_path / "missing.h5"
    args = ["--debug", "show", missing] if where == "before" else ["show", missing, "--debug"]
    result = run(*args)
    assert result.exit_code == 3, result.output
    assert "Traceback" in result.stderr and result.stderr.rstrip().splitlines()[-1].startswith("mechdiff: error:")
    assert result.stdout == ""


def test_without_debug_the_same_error_is_one_line(tmp_path):
    result = run("show", tmp_path / "missing.h5")
    assert result.exit_code == 3 and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("debug", [[], ["--debug"]])
def test_interrupt_exits_130_with_or_without_debug(monkeypatch, tmp_path, debug):
    from mechdiff.report import summary

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(summary, "summarize", interrupted)
    result = run("show", tmp_path / "any.h5", *debug)
    assert result.exit_code == 130, result.output
    assert "interrupted" in result.stderr


def test_debug_keeps_usage_errors_at_exit_2(tmp_path):
    result = run("diff", tmp_path / "a", "--debug")  # neither FT nor --adapter
    assert result.exit_code == 2, result.output


def test_debug_after_double_dash_is_an_argument_not_the_flag(tmp_path):
    result = run("show", "--", "--debug")
    assert result.exit_code == 3 and "--debug" in result.stderr and "Traceback" not in result.stderr
