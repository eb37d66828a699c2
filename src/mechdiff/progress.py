"""Progress on stderr: tqdm bars on a terminal, a plain line every few seconds in a log.

Why the second: carriage-return bars written to a file or a CI log pile up (an audit's
log was 300 KB of bars). When stderr is not a terminal, `bar` writes one complete line
at most every LOG_EVERY_S seconds, and transformers' own bars stay off.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

from mechdiff.interrupt import check

LOG_EVERY_S = 5.0
"""Seconds between two progress lines when stderr is not a terminal."""


class _Stoppable(tqdm):
    """A bar that ends its loop on a remembered Ctrl-C (interrupt.py), at the next step it counts.

    Python may swallow the KeyboardInterrupt inside a finalizer; every bar checks the remembered
    signal, so a command stops within one step of Ctrl-C instead of running to its end.
    """

    def update(self, n: float | None = 1) -> bool | None:
        check()
        return super().update(n)

    def __iter__(self) -> Iterator[Any]:
        for item in super().__iter__():
            check()
            yield item


class TerminalBar(_Stoppable):
    """tqdm's own bar for an interactive terminal."""


class LineBar(_Stoppable):
    """tqdm that writes whole lines, at most one per LOG_EVERY_S seconds, never a carriage return."""

    _last_line = 0.0
    _last_n = -1

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":  # tqdm clearing a finished bar: nothing to erase in a log
            return False
        now = self._time()  # tqdm's clock
        if msg is None and self._last_line and now - self._last_line < LOG_EVERY_S:
            return True  # the first line goes out at once (as soon as tqdm's delay allows), then one per interval
        self._last_line, self._last_n = now, self.n
        self.fp.write((msg if msg is not None else str(self)).strip() + "\n")
        self.fp.flush()
        return True

    def close(self) -> None:
        if not self.disable and self._last_line and self.n != self._last_n:  # the final count, if not shown yet
            self.display(str(self))
        self.leave = False
        super().close()


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes, captured output)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def new_bar(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """A progress bar on stderr (tqdm's arguments): a tqdm bar on a terminal, else a `LineBar`."""
    kwargs.setdefault("file", sys.stderr)
    if is_terminal(kwargs["file"]):
        return TerminalBar(iterable, **kwargs)
    kwargs.pop("dynamic_ncols", None)
    return LineBar(iterable, **kwargs)


@contextlib.contextmanager
def progress_bar(total: int, desc: str, *, unit: str = "it", enabled: bool = True) -> Iterator[tqdm]:
    """A bar on stderr, hidden for the first second and when disabled."""
    handle = new_bar(total=total, desc=desc, unit=unit, unit_scale=True, delay=1.0, disable=not enabled, leave=False,
                 dynamic_ncols=True)
    try:
        yield handle
    finally:
        handle.close()


@contextlib.contextmanager
def hf_progress(enabled: bool) -> Iterator[None]:
    """transformers' own bars (loading and writing shards) on only when progress is on and stderr is a terminal."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    on = enabled and is_terminal(sys.stderr)
    (hf_logging.enable_progress_bar if on else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()
