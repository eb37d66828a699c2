"""`mechdiff demo`: a tiny base model, a fine-tune with a planted backdoor (trained for real), audited."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def run_demo(out_dir: str | os.PathLike, *, progress: bool = True, device: str = "auto",
             seed: int = 0) -> dict[str, Any]:
    """Build the pair (cached in ``out_dir/models``), audit it with data, write results and report.

    Args:
        out_dir: folder for the models, ``audit.h5`` and ``report.html``.
        progress: progress bars on stderr.
        device: where the audit runs the models and trains ("auto": a GPU when there is one).
        seed: seed of the toy pair's training and of the audit's.

    Returns:
        A JSON-able document: the audit, the planted trigger/target, and the file paths.
    """
    from mechdiff.api import audit_checkpoints
    from mechdiff.diffing.audit.run_options import audit_config
    from mechdiff.needs import check_needs
    from mechdiff.toylm import build_pair

    check_needs(models=True, report=True)  # before minutes of training, not after
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pair = build_pair(out / "models", variant="backdoor", progress=progress, reuse=True, seed=seed)
    results, report = out / "audit.h5", out / "report.html"
    config = audit_config(device, seed=seed)
    audit = audit_checkpoints(pair.base_dir, pair.ft_dir, data=pair.corpus_path, out=results, report=report,
                              config=config, progress=progress, command=f"mechdiff demo -o {out}")
    return {"audit": audit.to_json(), "trigger": pair.trigger, "target": pair.target,
            "results": str(results), "report": str(report), "pair_metrics": pair.metrics}
