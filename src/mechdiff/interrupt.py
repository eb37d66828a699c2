"""Ctrl-C that cannot be lost between the signal and the results file.

Python turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be. When that
is a finalizer or a generator closed by the garbage collector, Python prints "Exception
ignored" and carries on: a diff interrupted under load once ran to the end and wrote its
results (exit 0). The commands therefore also remember the signal, and the results writer
checks before it commits a file.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

_pending = threading.Event()


@contextlib.contextmanager
def remembered() -> Iterator[None]:
    """While the body runs (main thread only), SIGINT raises KeyboardInterrupt as usual and is remembered."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield  # signals reach the main thread only; a process started to ignore Ctrl-C (nohup) keeps ignoring it
        return

    def handler(signum: int, frame: Any) -> None:
        _pending.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _pending.clear()


def interrupted() -> bool:
    """Whether a Ctrl-C was remembered while a command runs."""
    return _pending.is_set()


def check() -> None:
    """Raise KeyboardInterrupt if a remembered Ctrl-C was swallowed since."""
    if interrupted():
        raise KeyboardInterrupt
