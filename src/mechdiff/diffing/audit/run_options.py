"""The audit's config from the options every model-running command shares (--device, --seed, --dtype)."""

from __future__ import annotations

from mechdiff.diffing.audit.verdict import AuditConfig
from mechdiff.diffing.behaviour.kl import BehaviourConfig
from mechdiff.diffing.weights.diff import DiffConfig
from mechdiff.distributed import resolve_device


def audit_config(device: str = "auto", *, seed: int = 0, dtype: str = "float32", precision: str = "auto",
                 **fields: object) -> AuditConfig:
    """An AuditConfig whose diff, model runs and training all use ``device``.

    Args:
        device: "auto" (a GPU when there is one), "cpu", "cuda" or "cuda:N".
        seed: seed of the crosscoder and the components lens.
        dtype: dtype the models run in.
        precision: the crosscoder's training precision (see ``crosscoder.precision``; 'auto'
            follows ``dtype`` and the device).
        fields: any other AuditConfig field.

    Returns:
        The config.

    Raises:
        UsageError: no GPU for "cuda", or a precision the device cannot run (checked before any work).
    """
    from mechdiff.diffing.crosscoder.precision import (
        check_precision,
        requested_precision,
    )

    model_device = resolve_device(device)
    check_precision(requested_precision(precision, dtype), model_device)
    options = dict(fields.pop("crosscoder_options", None) or {})  # type: ignore[call-overload]
    if precision != "auto":
        options["precision"] = precision
    return AuditConfig(diff=DiffConfig(device=device), behaviour=BehaviourConfig(device=model_device),
                       seed=seed, dtype=dtype, crosscoder_options=options, **fields)  # type: ignore[arg-type]
