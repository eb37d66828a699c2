"""`mechdiff show` and the HTML report for the ADL, logit-diff and amplified parts and the audit's causal check.

Each part keeps its whole JSON document in the ``document`` attribute, so the summary is the
document (as the audit JSON has it) and a few lines of text.
"""

from __future__ import annotations

from typing import Any

from mechdiff.report.html_page import Markup, Section, esc, fmt_num, table, token_chips
from mechdiff.store import Results

LENS_PARTS = ("adl", "logit_diff", "amplified")
SHOWN_TOKENS = 10


def _document(results: Results, name: str) -> Any:
    return results.part(name).attrs.get("document", {})



def adl_text(doc: dict) -> str:
    steered = doc.get("steered") or []
    lines = [(f"Activation-difference lens (layer {doc.get('layer')}, first {doc.get('positions')} positions; "
             f"logit-lens KL {fmt_num(doc.get('readout_kl'))} nats)"),
             f"  tokens up:   {', '.join(doc.get('tokens_up', [])[:SHOWN_TOKENS])}",
             f"  tokens down: {', '.join(doc.get('tokens_down', [])[:SHOWN_TOKENS])}",
             f"  patchscope:  {', '.join(doc.get('patchscope', [])[:SHOWN_TOKENS])}"]
    if steered:
        lines.append(f"  steered (alpha {fmt_num(steered[0]['alpha'])}): {steered[0]['text'][:160]}")
    return "\n".join(lines)


def logit_diff_text(doc: dict) -> str:
    lines = [f"Logit-difference mining ({doc.get('n_positions')} positions; ranked by share of the KL)",
             f"  tokens up:   {', '.join(doc.get('tokens_up', [])[:SHOWN_TOKENS])}",
             f"  tokens down: {', '.join(doc.get('tokens_down', [])[:SHOWN_TOKENS])}"]
    lines += [f"  topic {i + 1}: {', '.join(t['tokens'][:6])}" for i, t in enumerate(doc.get("topics", []))]
    return "\n".join(lines)


def amplified_text(doc: list) -> str:
    lines = ["Amplified sampling: logits_ft + alpha (logits_ft - logits_base)"]
    for row in doc:
        rates = ", ".join(f"{t} {100 * r:.1f}%" for t, r in sorted(row["rates"].items(), key=lambda x: -x[1])[:5])
        lines.append(f"  alpha {row['alpha']:g}: {rates or '(no rates)'} | {row['samples'][0][:100] if row['samples'] else ''}")
    return "\n".join(lines)


def lens_text(document: dict) -> str:
    """What `mechdiff lens` prints: the lens's summary and where the text came from."""
    if "adl" in document:
        body = adl_text(document["adl"])
    elif "logit_diff" in document:
        body = logit_diff_text(document["logit_diff"])
    else:
        body = amplified_text(document["amplified"])
    return f"{body}\nText: {document['text']}"


def causal_text(causal: dict) -> str:
    """One line on the joint ablation of the top weight / head findings."""
    if not causal:
        return ""
    return (f"Causal check (findings {causal.get('findings')}): removing their structured parts removes "
            f"{100 * causal['ablate_kl_fraction']:.0f}% of the KL where it is largest, doubling them multiplies "
            f"it by {causal['amplify_kl_ratio']:.2f}; equal-norm drift removes "
            f"{100 * causal['drift_ablate_kl_fraction']:.0f}%")


def lens_sections(results: Results) -> list[Section]:
    """Report sections of the lens parts present, and the audit's causal check."""
    sections = []
    parts = set(results.parts)
    if "adl" in parts:
        doc = _document(results, "adl")
        rows = [["up", token_chips(doc["tokens_up"], SHOWN_TOKENS)], ["down", token_chips(doc["tokens_down"], SHOWN_TOKENS)],
                ["patchscope", token_chips(doc.get("patchscope", []), SHOWN_TOKENS)]]
        body = table(["readout", "tokens"], rows) + _steered(doc.get("steered", []))
        sections.append(Section("Activation-difference lens", Markup(body),
                                f"mean h_ft - h_base at layer {doc['layer']} over the first {doc['positions']} positions "
                                "of unrelated text, read through the logit lens and a patchscope", anchor="adl"))
    if "logit_diff" in parts:
        doc = _document(results, "logit_diff")
        rows = [["up", token_chips(doc["tokens_up"], SHOWN_TOKENS)], ["down", token_chips(doc["tokens_down"], SHOWN_TOKENS)]]
        rows += [[f"topic {i + 1}", token_chips(t["tokens"], 8)] for i, t in enumerate(doc.get("topics", []))]
        sections.append(Section("Logit-difference mining", Markup(table(["", "tokens"], rows)),
                                "tokens ranked by their share of KL(ft || base) per position; NMF topics of the rises",
                                anchor="logit-diff"))
    if "amplified" in parts:
        doc = _document(results, "amplified")
        rows = [[fmt_num(r["alpha"]), ", ".join(f"{t} {100 * v:.1f}%" for t, v in sorted(r["rates"].items(),
                 key=lambda x: -x[1])[:5]), r["samples"][0] if r["samples"] else ""] for r in doc]
        sections.append(Section("Amplified sampling", Markup(table(["alpha", "top findings' tokens", "sample"], rows)),
                                "samples of logits_ft + alpha (logits_ft - logits_base) from the start token",
                                anchor="amplified"))
    text = results.part("audit").attrs.get("text") if "audit" in parts else None
    if text:
        sections.append(Section("Text the models read", Markup(f"<p>{esc(text)}</p>"),
                                "what the lenses that run both models were given", anchor="text"))
    causal = results.part("audit").attrs.get("causal") if "audit" in parts else None
    if causal:
        sections.append(Section("Causal check of weight findings", Markup(f"<p>{esc(causal_text(causal))}</p>"),
                                "structured parts (singular directions above the noise edge) removed from FT",
                                anchor="causal"))
    return sections


def _steered(steered: list[dict]) -> str:
    if not steered:
        return ""
    return "<h3>Steered samples</h3>" + table(["alpha", "text"], [[fmt_num(s["alpha"]), s["text"]] for s in steered[:4]])
