"""The audit's config from the options every model-running command shares (--device, --seed, --dtype)."""

from __future__ import annotations

from mechdiff.diffing.audit.verdict import AuditConfig
from mechdiff.diffing.behaviour.kl import BehaviourConfig
from mechdiff.diffing.weights.diff import DiffConfig
from mechdiff.distributed import resolve_device


def audit_config(device: str = "auto", *, seed: int = 0, dtype: str = "float32", **fields: object) -> AuditConfig:
    """An AuditConfig whose diff, model runs and training all use ``device``.

    Args:
        device: "auto" (a GPU when there is one), "cpu", "cuda" or "cuda:N".
        seed: seed of the crosscoder and the components lens.
        dtype: dtype the models run in.
        fields: any other AuditConfig field.

    Returns:
        The config.
    """
    return AuditConfig(diff=DiffConfig(device=device), behaviour=BehaviourConfig(device=resolve_device(device)),
                       seed=seed, dtype=dtype, **fields)  # type: ignore[arg-type]
