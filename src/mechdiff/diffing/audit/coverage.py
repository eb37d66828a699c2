"""What the audit looked at: each lens that ran, each that did not and why, and warnings on weak evidence.

A verdict of "pass" means only as much as the lenses behind it: a weight-only audit
cannot see a behaviour, so the verdict names what ran and what did not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

LENSES = ("weights", "heads", "behaviour", "crosscoder", "components")
MIN_TOKENS_PER_LATENT = 64
"""The crosscoder sizing gives each latent at least this many corpus tokens (see audit_crosscoder_config)."""
MIN_LATENTS = 64
"""The smallest dictionary the audit trains; a corpus below 64 x 64 tokens cannot feed even that."""
DEAD_WARN_FRACTION = 0.5
"""A crosscoder with more dead latents than this learned little from the corpus."""


@dataclass(frozen=True)
class AuditInputs:
    """What the audit was given, as far as choosing lenses goes."""

    data: str | os.PathLike | None
    """The corpus (None: no --data)."""
    adapter: str | os.PathLike | None
    """A PEFT adapter standing in for FT (None: FT is a model)."""
    runnable: bool
    """Both BASE and FT are Hugging Face model folders that can be run."""
    corpus_tokens: int = 0
    """Approximate tokens in the corpus."""


def lens_coverage(inputs: AuditInputs, config: Any, lenses: Any, diff: Any) -> list[dict[str, Any]]:
    """Every lens as ``{"name", "ran", "why"}``.

    Args:
        inputs: what the audit was given.
        config: the AuditConfig.
        lenses: ``ModelLenses`` of the model-running lenses (None when they did not run).
        diff: the WeightDiff.
    """
    blocked = _why_models_not_run(inputs)
    ran = {"weights": True, "heads": bool(diff.heads),
           "behaviour": lenses is not None and lenses.behaviour is not None,
           "crosscoder": lenses is not None and lenses.crosscoder is not None,
           "components": lenses is not None and lenses.decomposition is not None}
    off = {"behaviour": config.behaviour is None and "turned off in the audit config",
           "crosscoder": not config.crosscoder and "turned off (--no-crosscoder)",
           "components": not config.components and "off by default (turn on with --components GLOB)"}
    why = {"weights": "", "heads": "" if diff.heads else "the layout has no attention heads to split"}
    for name in ("behaviour", "crosscoder", "components"):
        why[name] = "" if ran[name] else (off[name] or blocked or "did not run")
    return [{"name": name, "ran": ran[name], "why": why[name]} for name in LENSES]


def normalize_lenses(raw: list[Any]) -> list[dict[str, Any]]:
    """Lens entries as dicts; a bare name (files before 0.1, or a list of names) is a lens that ran."""
    return [dict(entry) if isinstance(entry, dict) else {"name": str(entry), "ran": True, "why": ""}
            for entry in raw]


def _why_models_not_run(inputs: AuditInputs) -> str:
    if inputs.data is None:
        return "no --data corpus given; the model-running lenses need text"
    if inputs.adapter is not None:
        return "FT is a PEFT adapter; the model-running lenses need two model folders"
    if not inputs.runnable:
        return "BASE and FT must both be Hugging Face model folders (config.json) to be run"
    return ""


def audit_warnings(inputs: AuditInputs, lenses: Any) -> list[str]:
    """Warnings on evidence too thin to trust: a tiny corpus, a crosscoder that is mostly dead."""
    warnings = []
    if inputs.data is not None and inputs.corpus_tokens < MIN_TOKENS_PER_LATENT * MIN_LATENTS:
        warnings.append(f"the corpus is tiny (~{inputs.corpus_tokens} tokens; the crosscoder wants at least "
                        f"{MIN_TOKENS_PER_LATENT * MIN_LATENTS}): behaviour and crosscoder evidence is weak, "
                        "and a pass means little")
    crosscoder = getattr(lenses, "crosscoder", None)
    dead = None if crosscoder is None else crosscoder.attrs().get("dead_fraction")
    if dead is not None and dead > DEAD_WARN_FRACTION:
        warnings.append(f"{100 * dead:.0f}% of the crosscoder's latents are dead: it learned little from this "
                        "corpus (give more or more varied text)")
    return warnings
