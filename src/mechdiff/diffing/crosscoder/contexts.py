"""Top-activating contexts per latent rendered as text (tracking is mechdiff.kernels.TopN)."""

from __future__ import annotations

from typing import Any

import numpy as np

MARK_OPEN, MARK_CLOSE = "[[", "]]"


def context_text(tokens: np.ndarray, pos: int, decode: Any, before: int = 12, after: int = 3) -> str:
    """A text window around one token, the token marked as [[token]].

    Args:
        tokens: the document's token ids.
        pos: the position of the activating token.
        decode: function from a list of ids to text (e.g. ``tokenizer.decode``).
        before: tokens shown before it; after: tokens shown after it.

    Returns:
        The window as one line.
    """
    left = decode([int(t) for t in tokens[max(0, pos - before):pos]])
    mid = decode([int(tokens[pos])])
    right = decode([int(t) for t in tokens[pos + 1:pos + 1 + after]])
    return f"{left} {MARK_OPEN}{mid.strip()}{MARK_CLOSE} {right}".replace("\n", " ").strip()
