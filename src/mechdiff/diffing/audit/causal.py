"""Causal confirmation of weight and head findings: does the structured part of a change cause the behaviour?

For a finding's matrix (or head slice) the structured part is the change's singular directions
above the noise edge (`weightdecomp.spectral.analyze_delta`). The fine-tune is rebuilt with it
removed (W_ft - S) and doubled (W_ft + S), and KL(ft' || base) is measured at the positions where
the behaviour lens found the fine-tune's KL largest, and over a slice of the corpus. The control
removes, from the same matrices, drift-only directions of equal norm (the rest of the change,
scaled to |S|). A finding is causal when its ablation removes at least ``causal_share`` of the
KL at those positions and the control removes at most ``control_share``.
"""

from __future__ import annotations

import contextlib
import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from mechdiff.weightdecomp.spectral import SpectralConfig
from mechdiff.weightdecomp.spectral.edge import analyze_delta


@dataclass(frozen=True)
class CausalConfig:
    """Which findings are tested and where the KL is measured."""

    top_findings: int = 16
    """Weight and head findings tested (the highest scores), each alone and then all together. A
    fine-tune spreads one behaviour over many matrices: on the demo backdoor the 8 weight
    findings jointly carry 67% of the KL at the trigger, adding the 8 head findings 93%."""
    top_positions: int = 64
    """Positions with the largest KL(ft || base) the behaviour lens saw: where the KL is measured."""
    corpus_docs: int = 32
    """Documents (the first ones) of the corpus-wide KL."""
    causal_share: float = 0.5
    """Share of the KL at the top positions an ablation must remove for "causal"."""
    control_share: float = 0.2
    """Share the equal-norm drift control may remove at most for "causal"."""
    spectral: SpectralConfig = field(default_factory=SpectralConfig)
    """How the structured part is found (the weight lens's settings)."""

    def __post_init__(self) -> None:
        if self.top_findings <= 0 or self.top_positions <= 0 or self.corpus_docs <= 0:
            raise ValueError("CausalConfig: counts must be positive")
        if not 0 < self.control_share < self.causal_share <= 1:
            raise ValueError("CausalConfig: need 0 < control_share < causal_share <= 1")


@dataclass
class Edit:
    """The structured part of one parameter's change, and its equal-norm drift control, in storage shape."""

    param: str
    structured: torch.Tensor
    drift: torch.Tensor


class TopPositions:
    """Behaviour-lens observer: the (kl, doc, pos) of the largest KL(ft || base) positions."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.heap: list[tuple[float, int, int]] = []

    def add(self, first_doc: int, ids: torch.Tensor, mask: torch.Tensor, logp_base: torch.Tensor,
            logp_ft: torch.Tensor) -> None:
        kl = (logp_ft.exp() * (logp_ft - logp_base)).sum(-1).masked_fill(~mask.bool(), -1.0)
        values, flat = torch.topk(kl.flatten(), min(self.n, kl.numel()))
        for value, index in zip(values.tolist(), flat.tolist()):
            if value >= 0:
                b, t = divmod(index, kl.shape[1])
                item = (value, first_doc + b, t)
                heapq.heappush(self.heap, item) if len(self.heap) < self.n else heapq.heappushpop(self.heap, item)

    def positions(self) -> list[tuple[int, int]]:
        return [(doc, pos) for _, doc, pos in sorted(self.heap, reverse=True)]


def structured_part(D: torch.Tensor, config: SpectralConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, control): S = the change's singular directions above the noise edge; control = D - S scaled to |S|."""
    spectrum = analyze_delta(D.float(), base_norm=1.0, config=config)
    r = spectrum.rank
    U = torch.from_numpy(spectrum.U[:, :r]).to(D.device)
    V = torch.from_numpy(spectrum.V[:, :r]).to(D.device)
    s = torch.from_numpy(spectrum.singular_values[:r]).to(D.device)
    S = (U * s) @ V.T
    bulk = D.float() - S
    bulk_norm, s_norm = float(bulk.norm()), float(S.norm())
    # an exactly low-rank change leaves only round-off outside S: no drift to control with
    drifted = bulk_norm > config.rel_floor * math.sqrt(spectrum.frob2)
    control = bulk * (s_norm / bulk_norm) if drifted else torch.zeros_like(bulk)
    return S, control


def finding_edits(finding: Any, params: dict[str, tuple[nn.Parameter, torch.Tensor]], pairing: Any,
                  config: SpectralConfig) -> list[Edit]:
    """The edits of a weight finding (its matrix) or a head finding (its slices of the layer's attention).

    Args:
        finding: a ``Finding`` of method "weights" (``tensor``) or "heads" (``layer``, ``head``).
        params: model parameter name -> (FT's parameter, BASE's values).
        pairing: the checkpoints' ``Pairing`` (orientation and head slicing of each tensor).
        config: spectral settings.
    """
    if finding.method == "weights":
        name = _param_name(finding.tensor, params)
        if name is None:
            return []
        ft_param, base_value = params[name]
        if ft_param.ndim != 2:
            return []
        S, control = structured_part(ft_param.detach() - base_value, config)
        return [Edit(name, S, control)]
    return _head_edits(finding, params, pairing, config)


def _head_edits(finding: Any, params: dict, pairing: Any, config: SpectralConfig) -> list[Edit]:
    from mechdiff.diffing.weights.heads import head_slices

    geometry = pairing.layout.geometry if pairing is not None else None
    group = (finding.evidence or {}).get("kind", "attn")
    edits = []
    for pair in pairing.pairs if geometry is not None else []:
        name = _param_name(pair.name, params)
        if pair.info.layer != finding.layer or pair.info.heads is None or name is None:
            continue
        ft_param, base_value = params[name]
        flip = pair.info.orientation == "in_out"
        D = (ft_param.detach() - base_value).reshape(ft_param.shape[0], -1)
        D = D.T if flip else D
        for sl in head_slices(pair.info.heads, pair.info.kind, tuple(D.shape), geometry):
            if sl.head != finding.head or sl.group != group:
                continue
            S_full, control_full = torch.zeros_like(D), torch.zeros_like(D)
            S, control = structured_part(sl.take(D), config)
            _put(S_full, sl, S)
            _put(control_full, sl, control)
            edits.append(Edit(name, (S_full.T if flip else S_full).reshape(ft_param.shape),
                              (control_full.T if flip else control_full).reshape(ft_param.shape)))
    return edits


def _put(full: torch.Tensor, sl: Any, block: torch.Tensor) -> None:
    rows = sl.rows if sl.rows is not None else slice(None)
    cols = sl.cols if sl.cols is not None else slice(None)
    full[rows, cols] = block


def _param_name(tensor: str, params: dict) -> str | None:
    """The model parameter of a checkpoint tensor name (exact, else the longest common suffix)."""
    if tensor in params:
        return tensor
    matches = [p for p in params if p.endswith("." + tensor) or tensor.endswith("." + p)]
    return max(matches, key=len) if matches else None


@contextlib.contextmanager
def applied(params: dict, edits: list[Edit], which: str, factor: float) -> Iterator[None]:
    """FT's parameters with ``factor`` times each edit's ``which`` part added, restored bit for bit afterwards."""
    saved = {e.param: params[e.param][0].detach().clone() for e in edits}
    try:
        for e in edits:
            param = params[e.param][0]
            param.data.add_((getattr(e, which) * factor).to(param.dtype))
        yield
    finally:
        for name, value in saved.items():
            params[name][0].data.copy_(value)


@dataclass
class KLProbe:
    """Where the KL is measured: batches of documents, the top positions among them, base log-probabilities."""

    batches: list[tuple[torch.Tensor, torch.Tensor]]  # (ids, mask) [B, T], right-padded
    logp_base: list[torch.Tensor]  # [B, T, V] per batch
    top: list[tuple[int, int, int]]  # (batch, row, position) of the top-KL positions

    @torch.no_grad()
    def kl(self, ft: nn.Module) -> tuple[float, float]:
        """Mean KL(ft || base) at the top positions, and over every position of the documents."""
        per_batch, total, count = [], 0.0, 0
        for (ids, mask), lb in zip(self.batches, self.logp_base):
            lf = torch.log_softmax(ft(input_ids=ids, attention_mask=mask).logits.float(), -1)
            kl = (lf.exp() * (lf - lb)).sum(-1).clamp_min(0.0) * mask
            per_batch.append(kl)
            total, count = total + float(kl.sum()), count + int(mask.sum())
        at_top = [float(per_batch[b][r, p]) for b, r, p in self.top]
        return (sum(at_top) / len(at_top) if at_top else 0.0), total / max(count, 1)


@torch.no_grad()
def kl_probe(base: nn.Module, docs: list[np.ndarray], top: list[tuple[int, int]], corpus_docs: int,
             device: str = "cpu", batch_docs: int = 16) -> KLProbe:
    """The documents holding the top positions plus the first ``corpus_docs``, with the base's log-probabilities."""
    from mechdiff.diffing.activations.collect import pad_batch

    chosen = sorted({d for d, _ in top} | set(range(min(corpus_docs, len(docs)))))
    where = {d: divmod(i, batch_docs) for i, d in enumerate(chosen)}
    batches = [pad_batch([docs[d] for d in chosen[i:i + batch_docs]], 0, device)
               for i in range(0, len(chosen), batch_docs)]
    logp = [torch.log_softmax(base(input_ids=ids, attention_mask=mask).logits.float(), -1) for ids, mask in batches]
    return KLProbe(batches, logp, [(*where[d], p) for d, p in top])


@dataclass
class CausalResult:
    """Per tested finding and jointly: how much of the behaviour change its structured part carries."""

    per_finding: dict[tuple, dict[str, float]]
    joint: dict[str, Any]
    reference: dict[str, float]  # KL of the unedited fine-tune: at the top positions, over the corpus

    def for_finding(self, finding: Any) -> dict[str, float] | None:
        return self.per_finding.get(finding_key(finding))


def finding_key(finding: Any) -> tuple:
    return (finding.method, finding.tensor, finding.layer, finding.head)


def measure(ft: nn.Module, params: dict, probe: KLProbe, edits: list[Edit], reference: tuple[float, float],
            config: CausalConfig) -> dict[str, Any]:
    """Ablate, double, and ablate the drift control; fractions of the reference KL they remove or add."""
    out: dict[str, Any] = {}
    for label, which, factor in (("ablate", "structured", -1.0), ("amplify", "structured", 1.0),
                                 ("drift_ablate", "drift", -1.0)):
        with applied(params, edits, which, factor):
            out[label] = probe.kl(ft)
    top_ref, corpus_ref = reference

    def removed(kl: float, ref: float) -> float:
        return 1.0 - kl / ref if ref > 0 else 0.0

    result = {"ablate_kl_fraction": removed(out["ablate"][0], top_ref),
              "amplify_kl_ratio": out["amplify"][0] / top_ref if top_ref > 0 else math.nan,
              "drift_ablate_kl_fraction": removed(out["drift_ablate"][0], top_ref),
              "corpus_ablate_kl_fraction": removed(out["ablate"][1], corpus_ref),
              "corpus_amplify_kl_ratio": out["amplify"][1] / corpus_ref if corpus_ref > 0 else math.nan,
              "corpus_drift_ablate_kl_fraction": removed(out["drift_ablate"][1], corpus_ref)}
    result["causal"] = bool(result["ablate_kl_fraction"] >= config.causal_share
                            and result["drift_ablate_kl_fraction"] <= config.control_share)
    return result


def causal_confirmation(base: nn.Module, ft: nn.Module, findings: list[Any], docs: list[np.ndarray],
                        top_positions: list[tuple[int, int]], pairing: Any = None,
                        config: CausalConfig | None = None, device: str = "cpu") -> CausalResult:
    """Test the top weight / head findings, each alone and all together.

    Args:
        base: base causal LM; ft: fine-tuned causal LM (edited in place, always restored).
        findings: weight and head ``Finding`` objects (the highest ``config.top_findings`` are tested).
        docs: token ids of the corpus documents.
        top_positions: (document, position) of the largest KL(ft || base), best first.
        pairing: the checkpoints' ``Pairing`` (needed for head findings).
        config: counts and shares.
        device: where the models run.

    Returns:
        Per finding and joint fractions (joint ``findings`` holds the tested findings' keys).
    """
    config = config or CausalConfig()
    base_values = dict(base.named_parameters())
    params = {n: (p, base_values[n].detach()) for n, p in ft.named_parameters() if n in base_values}
    probe = kl_probe(base, docs, top_positions[: config.top_positions], config.corpus_docs, device)
    reference = probe.kl(ft)
    tested = sorted(findings, key=lambda f: -f.score)[: config.top_findings]
    per_finding, joint_edits, keys = {}, [], []
    for finding in tested:
        edits = finding_edits(finding, params, pairing, config.spectral)
        if not edits:
            continue
        per_finding[finding_key(finding)] = measure(ft, params, probe, edits, reference, config)
        joint_edits += edits
        keys.append(finding_key(finding))
    joint = measure(ft, params, probe, _merged(joint_edits), reference, config) if joint_edits else {}
    return CausalResult(per_finding, {**joint, "keys": keys},
                        {"top_positions_kl": reference[0], "corpus_kl": reference[1]})


def _merged(edits: list[Edit]) -> list[Edit]:
    """One edit per parameter: a weight finding and a head finding can share a matrix (count it once)."""
    by_param: dict[str, Edit] = {}
    for e in edits:
        if e.param not in by_param:
            by_param[e.param] = Edit(e.param, e.structured.clone(), e.drift.clone())
            continue
        known = by_param[e.param]
        overlap = (known.structured != 0) & (e.structured != 0)
        known.structured = torch.where(overlap, known.structured, known.structured + e.structured)
        known.drift = torch.where(overlap, known.drift, known.drift + e.drift)
    return list(by_param.values())
