"""How a finished torchrun rank ends: `distributed.leave` and the CLI's call of it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import click
import pytest
from click.testing import CliRunner

from mechdiff import distributed
from mechdiff.cli import handle_errors
from mechdiff.errors import InputError

RANK_SCRIPT = textwrap.dedent("""
    import atexit, sys
    from pathlib import Path
    import torch.distributed as dist
    from mechdiff.distributed import leave

    folder = Path(sys.argv[1])
    dist.init_process_group("gloo", init_method=(folder / "store").as_uri(), rank=0, world_size=1)
    atexit.register(lambda: (folder / "teardown_ran").write_text("yes"))
    print("verdict: FAIL", end="")  # no newline: only an explicit flush gets it out before os._exit
    sys.stderr.write("last log line")
    leave(int(sys.argv[2]))
    (folder / "went_on").write_text("yes")
""")


def test_leave_without_a_process_group_returns():
    assert distributed.leave(7) is None  # one process: the caller goes on (and pytest is still alive)


@pytest.mark.parametrize("code", [0, 1])
def test_a_finished_rank_flushes_then_exits_with_its_code_and_skips_teardown(tmp_path, code):
    done = subprocess.run([sys.executable, "-c", RANK_SCRIPT, str(tmp_path), str(code)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == code, done.stderr
    assert done.stdout == "verdict: FAIL"
    assert done.stderr.endswith("last log line")
    assert not (tmp_path / "went_on").exists()
    assert not (tmp_path / "teardown_ran").exists()  # no atexit, no C++ destructors after the barrier


@click.command()
@click.option("--exit-code", type=int, default=None)
@click.option("--broken", is_flag=True)
@handle_errors
def _command(exit_code: int | None, broken: bool) -> None:
    if broken:
        raise InputError("no such folder")
    if exit_code is not None:
        sys.exit(exit_code or None)  # sys.exit() with no code is a success


@pytest.mark.parametrize(("args", "exit_code", "left_with"), [
    ([], 0, [0]),  # finished
    (["--exit-code", "0"], 0, [0]),  # sys.exit() with no code
    (["--exit-code", "1"], 1, [1]),  # finished with findings above the gate
    (["--broken"], 3, []),  # an error: no barrier, the other ranks are stopped by torchrun
])
def test_commands_leave_with_their_exit_code_only_when_they_finish(monkeypatch, args, exit_code, left_with):
    calls: list[int] = []
    monkeypatch.setattr(distributed, "leave", calls.append)
    result = CliRunner().invoke(_command, args)
    assert result.exit_code == exit_code, result.output
    assert calls == left_with
