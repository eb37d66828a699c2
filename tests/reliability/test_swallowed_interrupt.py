"""A Ctrl-C that Python swallows (raised inside a finalizer) still leaves no results file."""

from __future__ import annotations

import io
import signal
import sys

import pytest

from mechdiff.interrupt import interrupted, remembered
from mechdiff.progress import new_bar
from mechdiff.store.writer import ResultsWriter


class _SignalInFinalizer:
    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)
        for _ in range(10_000):  # the handler runs here, inside __del__: Python prints "Exception ignored"
            pass


@pytest.fixture()
def python_sigint():
    """Python's own Ctrl-C handler for the test (a job started in the background ignores SIGINT)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_a_ctrl_c_swallowed_by_a_finalizer_stops_the_results_file(tmp_path, monkeypatch, python_sigint):
    out = tmp_path / "r.h5"
    ignored = []  # what Python reports as "Exception ignored in ..."
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: ignored.append(unraisable.exc_type))
    with remembered():
        _SignalInFinalizer()  # dropped at once: its __del__ raises KeyboardInterrupt, which Python ignores
        assert ignored == [KeyboardInterrupt] and interrupted()
        with pytest.raises(KeyboardInterrupt), ResultsWriter(out, command="test") as writer:
            writer.group("g")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the file nor its .tmp
    assert not interrupted()  # the memory ends with the command; Python's own handler is back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_a_ctrl_c_the_file_is_committed(tmp_path, python_sigint):
    with remembered(), ResultsWriter(tmp_path / "r.h5", command="test") as writer:
        writer.group("g")
    assert (tmp_path / "r.h5").is_file()


def test_a_process_that_ignores_ctrl_c_keeps_ignoring_it(tmp_path):
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with remembered():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)  # ignored: nothing raised, nothing remembered
            assert not interrupted()
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("terminal", [False, True])
def test_a_swallowed_ctrl_c_stops_the_next_progress_step(monkeypatch, python_sigint, terminal):
    """Every progress bar checks the remembered signal, so a command stops within one step, not at its end."""
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: None)
    monkeypatch.setattr("mechdiff.progress.is_terminal", lambda stream: terminal)
    done = []
    with remembered():
        bar = new_bar(total=5, file=io.StringIO())
        bar.update()  # no Ctrl-C yet: counts as usual
        _SignalInFinalizer()
        with pytest.raises(KeyboardInterrupt):
            bar.update()
        with pytest.raises(KeyboardInterrupt):
            done.extend(new_bar(range(5), file=io.StringIO()))
    assert done == [] and bar.n == 1  # neither loop did a step after the signal
