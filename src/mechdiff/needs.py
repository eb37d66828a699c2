"""The packages a command will need, checked before it does any work.

Why: an audit that found its missing package only at the report lost minutes of work
and printed no verdict. transformers and matplotlib are core dependencies
(`pip install mechdiff` brings them), so this only fires in a trimmed environment.
"""

from __future__ import annotations

import importlib

from mechdiff.errors import InputError

_WHAT_FOR = {"transformers": "running the models", "matplotlib": "the HTML report's pictures"}


def check_needs(*, models: bool = False, report: bool = False) -> None:
    """Raise one InputError naming every missing package the command will need.

    Args:
        models: the command runs the models (transformers).
        report: the command draws an HTML report (matplotlib).
    """
    wanted = [name for name, needed in (("transformers", models), ("matplotlib", report)) if needed]
    missing = [name for name in wanted if not _importable(name)]
    if missing:
        uses = "; ".join(f"{name} for {_WHAT_FOR[name]}" for name in missing)
        raise InputError(f"missing package ({uses}); nothing was done: pip install {' '.join(missing)}")


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True
