"""The audit's lenses that compare the two models' outputs on text: behaviour (per-token KL),
logit-difference mining (fed by the same forward passes), the activation-difference lens,
amplified sampling, and the causal confirmation of the top weight / head findings."""

from __future__ import annotations

from typing import Any

from mechdiff.diffing.audit.findings import Finding
from mechdiff.diffing.audit.verdict import AuditConfig, weight_findings
from mechdiff.diffing.weights.result import WeightDiff


def run_difference_lenses(base: Any, ft: Any, tokenizers: tuple, texts: list[str], config: AuditConfig,
                          diff: WeightDiff | None, pairing: Any, skipped: dict[str, str]) -> dict[str, Any]:
    """Run every lens the config turns on; ``skipped`` gains a reason for each that does not run.

    Returns:
        {"behaviour", "logit_diff", "adl", "amplified", "causal"}: each result or None.
    """
    from mechdiff.diffing.audit.causal import TopPositions
    from mechdiff.diffing.behaviour.adl import activation_difference
    from mechdiff.diffing.behaviour.amplify import amplified_samples
    from mechdiff.diffing.behaviour.kl import behaviour_diff, paired_docs, token_text
    from mechdiff.diffing.behaviour.logit_diff import LogitDiffAccumulator

    found: dict[str, Any] = dict.fromkeys(("behaviour", "logit_diff", "adl", "amplified", "causal"))
    if config.behaviour is None:
        skipped.update({"behaviour": "turned off", "logit_diff": "needs the behaviour lens's passes",
                        "causal": "needs the behaviour lens's top positions"})
    else:
        mining = LogitDiffAccumulator(config.logit_diff) if config.logit_diff is not None else None
        top = TopPositions(config.causal.top_positions) if config.causal is not None else None
        observers = tuple(o for o in (mining, top) if o is not None)
        found["behaviour"] = behaviour_diff(base, ft, tokenizers, texts, config.behaviour, observers=observers)
        docs = paired_docs(base, ft, tokenizers, texts, config.behaviour.ctx_len)
        if mining is not None:
            found["logit_diff"] = mining.result(docs, lambda i: token_text(tokenizers[0], i))
        if top is not None:
            found["causal"] = _causal(base, ft, docs, top.positions(), diff, pairing, config, skipped)
    if config.adl is not None:
        found["adl"] = activation_difference(base, ft, tokenizers, texts, config.adl)
    if config.amplify is not None:
        found["amplified"] = amplified_samples(base, ft, tokenizers[0], config.amplify)
    for name in ("logit_diff", "adl", "amplified", "causal"):
        if found[name] is None and name not in skipped:
            skipped[name] = "turned off in the audit config"
    return found


def _causal(base: Any, ft: Any, docs: list, positions: list, diff: WeightDiff | None, pairing: Any,
            config: AuditConfig, skipped: dict[str, str]) -> Any:
    import dataclasses

    from mechdiff.diffing.audit.causal import causal_confirmation

    if diff is None:
        skipped["causal"] = "no weight diff to take findings from"
        return None
    findings = weight_findings(diff, config.thresholds) + head_candidates(diff, config.thresholds.weights_per_lens)
    if not findings:
        skipped["causal"] = "no weight or head finding with a structured change to test"
        return None
    causal_config = dataclasses.replace(config.causal, spectral=config.diff.spectral)  # the weight lens's ranks
    return causal_confirmation(base, ft, findings, docs, positions, pairing, causal_config, config.behaviour.device)


def head_candidates(diff: WeightDiff, limit: int) -> list[Finding]:
    """The heads with a structured change, strongest first, as findings the causal check can ablate.

    The audit folds a layer's heads into its matrix finding (one mechanism, one finding), but a
    fine-tune spreads one behaviour over the q/k/v slices of several heads as well as whole matrices;
    the joint ablation takes both (on the demo backdoor: 67% of the KL removed with matrices alone,
    93% with the heads too).
    """
    heads = sorted((h for h in diff.heads if h.rank > 0), key=lambda h: -h.score)[:limit]
    return [Finding("heads", h.score, f"rank-{h.rank} change in head {h.head} of layer {h.layer}", (), h.layer,
                    h.head, "", evidence={"parts": h.parts, "kind": h.kind}) for h in heads]


SINGLE_LENSES = ("adl", "logit-diff", "amplify")


def run_single_lens(name: str, base: Any, ft: Any, tokenizers: tuple, texts: list[str], layer: int | None = None,
                    device: str = "cpu") -> Any:
    """One of the lenses on its own (``mechdiff lens NAME``): its result, which can ``write`` its part.

    Amplified sampling without findings reports the rates of the tokens whose frequency rose most
    from the smallest to the largest alpha.
    """
    from mechdiff.diffing.behaviour.adl import ADLConfig, activation_difference
    from mechdiff.diffing.behaviour.amplify import AmplifyConfig, amplified_samples
    from mechdiff.diffing.behaviour.kl import BehaviourConfig
    from mechdiff.diffing.behaviour.logit_diff import logit_diff

    if name == "adl":
        return activation_difference(base, ft, tokenizers, texts, ADLConfig(layer=layer, device=device))
    if name == "logit-diff":
        return logit_diff(base, ft, tokenizers, texts, behaviour=BehaviourConfig(device=device))
    result = amplified_samples(base, ft, tokenizers[0], AmplifyConfig(device=device))
    return result.with_rates(result.rising_tokens())
