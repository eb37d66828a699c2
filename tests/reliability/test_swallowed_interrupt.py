"""A Ctrl-C that Python swallows (raised inside a finalizer) still leaves no results file."""

from __future__ import annotations

import signal
import sys

import pytest

from mechdiff.interrupt import interrupted, remembered
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
