"""Architecture layouts as data: which tensor is what, its orientation and its heads.

Layouts live in ``layouts/*.json``; a name template such as
``h.{layer}.attn.c_proj.weight`` matches a tensor name once the layout's
prefixes are stripped. Unknown architectures fall back to ``_generic.json``,
which infers kinds from keywords and layer numbers from ``.N.`` in names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from mechdiff.errors import InputError

KINDS = (
    "embed", "unembed", "attn_q", "attn_k", "attn_v", "attn_o", "attn_qkv",
    "mlp_in", "mlp_gate", "mlp_out", "router", "norm", "bias", "other",
)
READS_RESIDUAL = frozenset({"attn_q", "attn_k", "attn_v", "attn_qkv", "mlp_in", "mlp_gate", "router"})
WRITES_RESIDUAL = frozenset({"attn_o", "mlp_out"})
_LAYER_NUMBER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")
_EXPERT_NUMBER = re.compile(r"(?:^|\.)experts\.(\d+)\.")


@dataclass(frozen=True)
class HeadGeometry:
    """How attention projections split into heads."""

    n_heads: int
    n_kv_heads: int
    head_dim: int
    v_head_dim: int | None = None
    """Value rows per head where they differ from head_dim (DeepSeek's MLA kv_b_proj)."""
    experts_per_token: int = 1
    """Experts each token is routed to (MoE routers; 1 for dense models)."""


@dataclass(frozen=True)
class TensorInfo:
    """What the layout says about one tensor."""

    canonical: str
    layer: int | None
    kind: str
    orientation: str = "out_in"  # "in_out" for GPT-2 Conv1D: transpose before analysis
    heads: str | None = None  # "q", "kv", "o", "qkv", ... (see heads.head_slices): how to slice [out, in]
    expert: int | None = None  # the expert a per-expert tensor belongs to
    fused_experts: bool = False  # a 3-D tensor whose first axis is the expert
    classified: bool = True  # False when neither a template nor a keyword matched the name


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    kind: str
    orientation: str
    heads: str | None
    fused_experts: bool = False

    def info(self, canonical: str) -> TensorInfo | None:
        match = self.regex.search(canonical)
        if match is None:
            return None
        expert = match.groupdict().get("expert")
        if expert is None and not self.fused_experts:  # per-expert tensors a keyword matched
            numbered = _EXPERT_NUMBER.search(canonical)
            expert = numbered.group(1) if numbered else None
        return TensorInfo(canonical, _layer_of(canonical), self.kind, self.orientation, self.heads,
                          None if expert is None else int(expert), self.fused_experts)


@dataclass(frozen=True)
class Layout:
    """An architecture family's naming and geometry (see ``layouts/*.json``)."""

    name: str
    prefixes: tuple[str, ...]
    norm_offset: float
    embed: str | None
    unembed: str | None
    final_norm: str | None
    rules: tuple[_Rule, ...]
    skip: tuple[re.Pattern[str], ...]
    aliases: tuple[tuple[re.Pattern[str], str], ...]
    geometry: HeadGeometry | None = None
    config_keys: dict[str, list[str]] = field(default_factory=dict)

    def canonical(self, name: str) -> str:
        """Strip a known prefix and apply aliases (e.g. BERT's gamma -> weight)."""
        for prefix in self.prefixes:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        for pattern, replacement in self.aliases:
            name = pattern.sub(replacement, name)
        return name

    def describe(self, name: str) -> TensorInfo | None:
        """Classify a tensor; None when it is a buffer that is not a weight."""
        canonical = self.canonical(name)
        if any(p.search(canonical) for p in self.skip):
            return None
        for rule in self.rules:
            info = rule.info(canonical)
            if info is not None:
                return info
        kind = "bias" if canonical.endswith(".bias") else "other"
        return TensorInfo(canonical, _layer_of(canonical), kind, classified=False)


def _layer_of(canonical: str) -> int | None:
    match = _LAYER_NUMBER.search(canonical)
    return int(match.group(1)) if match else None


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template).replace(r"\{layer\}", r"(\d+)").replace(r"\{expert\}", r"(?P<expert>\d+)")
    return re.compile("^" + pattern + "$")


@cache
def _layout_files() -> dict[str, dict[str, Any]]:
    folder = resources.files("mechdiff.checkpoint") / "layouts"
    specs = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            specs[entry.name[:-5]] = json.loads(entry.read_text(encoding="utf-8"))
    return specs


def layout_names() -> list[str]:
    """Names of the built-in layouts (without the generic fallback)."""
    return sorted(spec["name"] for key, spec in _layout_files().items() if not key.startswith("_"))


def _build(spec: dict[str, Any], config: dict[str, Any] | None) -> Layout:
    rules = [
        _Rule(_template_regex(t), r["kind"], r.get("orientation", "out_in"), r.get("heads"), r.get("experts") == "fused")
        for t, r in spec.get("tensors", {}).items()
    ]
    # names no template knows (a variant's extra tensor, an adapter's wrapper) fall back to
    # the generic keywords, so a new sibling architecture still gets kinds and experts
    generic = _layout_files()["_generic"]
    keywords = spec.get("keywords", []) + (generic["keywords"] if spec is not generic else [])
    rules += [_keyword_rule(entry) for entry in keywords]
    skip = [_template_regex(t) for t in spec.get("skip", [])]
    skip += [re.compile(rx) for rx in spec.get("skip_keywords", []) + generic["skip_keywords"]]
    aliases = tuple((re.compile(rx), repl) for rx, repl in spec.get("aliases", []))
    return Layout(
        name=spec["name"],
        prefixes=tuple(spec.get("prefixes", [])),
        norm_offset=float(spec.get("norm_offset", 0.0)),
        embed=spec.get("embed"),
        unembed=spec.get("unembed"),
        final_norm=spec.get("final_norm"),
        rules=tuple(rules),
        skip=tuple(skip),
        aliases=aliases,
        geometry=_geometry(spec.get("config", {}), config),
        config_keys=spec.get("config", {}),
    )


def _keyword_rule(entry: list) -> _Rule:
    """A ``[regex, kind, heads]`` or ``[regex, kind, heads, {"experts": "fused", "orientation": ...}]`` keyword."""
    regex, kind, heads, *extra = entry
    options = extra[0] if extra else {}
    return _Rule(re.compile(regex), kind, options.get("orientation", "out_in"), heads, options.get("experts") == "fused")


def _config_value(config: dict[str, Any], keys: list[str]) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _geometry(keys: dict[str, list[str]], config: dict[str, Any] | None) -> HeadGeometry | None:
    if not config:
        return None
    config = {**config.get("text_config", {}), **config}
    n_heads = _config_value(config, keys.get("n_heads", []))
    hidden = _config_value(config, keys.get("hidden", []))
    if n_heads is None:
        return None
    n_kv = _config_value(config, keys.get("n_kv_heads", [])) or n_heads
    head_dim = _config_value(config, keys.get("head_dim", []))
    if head_dim is None:
        if hidden is None or hidden % n_heads:
            return None
        head_dim = hidden // n_heads
    if n_heads % n_kv:
        raise InputError(f"config.json: {n_heads} attention heads do not split into {n_kv} key/value groups")
    v_head_dim = _config_value(config, keys.get("v_head_dim", []))
    per_token = _config_value(config, keys.get("experts_per_token", ["num_experts_per_tok"])) or 1
    return HeadGeometry(n_heads, n_kv, head_dim, v_head_dim, per_token)


def config_dims(layout: Layout, config: dict[str, Any] | None) -> dict[str, int]:
    """The architecture sizes a config declares (layers, heads, hidden), for compatibility checks."""
    if not config:
        return {}
    config = {**config.get("text_config", {}), **config}
    dims = {}
    for dim, keys in layout.config_keys.items():
        value = _config_value(config, keys)
        if value is not None:
            dims[dim] = value
    return dims


def select_layout(config: dict[str, Any] | None, names: list[str]) -> Layout:
    """Pick the layout for a checkpoint.

    Args:
        config: the model's config.json (or None for a bare weights file).
        names: the checkpoint's tensor names.

    Returns:
        The matching layout, or the generic fallback when none matches.
    """
    specs = {k: v for k, v in _layout_files().items() if not k.startswith("_")}
    if config:
        model_type = config.get("model_type")
        archs = set(config.get("architectures") or [])
        for spec in specs.values():
            if model_type in spec["match"]["model_type"] or archs & set(spec["match"]["architectures"]):
                return _build(spec, config)
    best, best_hits = None, 0
    for spec in specs.values():
        layout = _build(spec, config)
        hits = sum(1 for n in names if _matches_template(layout, n))
        if hits > best_hits:
            best, best_hits = layout, hits
    if best is not None and best_hits >= max(1, len(names) // 2):
        return best
    return _build(_layout_files()["_generic"], config)


def _matches_template(layout: Layout, name: str) -> bool:
    canonical = layout.canonical(name)
    return any(rule.regex.pattern.startswith("^") and rule.regex.search(canonical) for rule in layout.rules)
