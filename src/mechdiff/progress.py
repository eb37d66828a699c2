"""Progress bars on stderr that appear only for work taking more than a second."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def progress_bar(total: int, desc: str, *, unit: str = "it", enabled: bool = True) -> Iterator[tqdm]:
    """A tqdm bar on stderr, hidden for the first second and when disabled."""
    bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr, delay=1.0,
               disable=not enabled, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
