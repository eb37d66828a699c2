"""Context windows and the --json / show summary, on hand-made tables."""

from __future__ import annotations

import numpy as np
import torch

from mechdiff.diffing.crosscoder.contexts import context_text
from mechdiff.diffing.crosscoder.metrics import classify, relative_norm
from mechdiff.diffing.crosscoder.summary import format_summary, summary_json

WORDS = ["<bos>", "the", "cat", "sat", "on", "mat"]


def _decode(ids: list[int]) -> str:
    return " ".join(WORDS[i] for i in ids)


def test_context_window_marks_the_token() -> None:
    tokens = np.array([0, 1, 2, 3, 4, 1, 5])
    assert context_text(tokens, 3, _decode, before=2, after=2) == "the cat [[sat]] on the"
    assert context_text(tokens, 0, _decode, before=2, after=1) == "[[<bos>]] the"


def test_relative_norm_and_classes() -> None:
    # decoder norms (base, ft): (0, 1) -> 1.0; (1, 0) -> 0.0; (1, 1) -> 0.5; (1, 3) -> 5/6; (2, 1) -> 0.25
    W = torch.zeros(5, 2, 1)
    W[:, 0, 0] = torch.tensor([0.0, 1.0, 1.0, 1.0, 2.0])
    W[:, 1, 0] = torch.tensor([1.0, 0.0, 1.0, 3.0, 1.0])
    delta = relative_norm(W).numpy()
    np.testing.assert_allclose(delta, [1.0, 0.0, 0.5, 5 / 6, 0.25])
    freq = np.array([0.1, 0.1, 0.1, 0.1, 0.0])
    assert classify(delta, freq).tolist() == ["ft-only", "base-only", "shared", "other", "dead"]


def test_summary_ranks_ft_only_by_freq_times_activation() -> None:
    latents = {
        "latent": np.arange(4), "delta": np.array([0.95, 0.99, 0.5, 0.7], dtype=np.float32),
        "cos": np.array([0.1, 0.2, 0.9, 0.4], dtype=np.float32), "freq": np.array([0.1, 0.01, 0.5, 0.2]),
        "mean_act": np.array([1.0, 2.0, 1.0, 1.0]), "cls": np.array(["ft-only", "ft-only", "shared", "other"], dtype=object),
        "nu_eps": np.array([0.05, np.nan, np.nan, np.nan]), "nu_r": np.array([0.3, np.nan, np.nan, np.nan]),
    }
    contexts = {"latent": np.array([0, 0]), "rank": np.array([1, 0]), "act": np.array([2.0, 3.0]),
                "doc": np.array([0, 1]), "pos": np.array([1, 2]), "text": np.array(["b [[x]]", "a [[x]]"], dtype=object)}
    attrs = {"site": "resid.1", "fve_base": 0.9, "fve_ft": 0.8, "l0": 4.0, "dead_fraction": 0.0}
    summary = summary_json(latents, contexts, attrs, top=2)
    assert summary["counts"] == {"ft-only": 2, "base-only": 0, "shared": 1, "other": 1, "dead": 0}
    assert [e["latent"] for e in summary["top_ft_only"]] == [0, 1]  # 0.1 x 1.0 beats 0.01 x 2.0
    assert [c["text"] for c in summary["top_ft_only"][0]["contexts"]] == ["a [[x]]", "b [[x]]"]  # by rank
    assert summary["top_ft_only"][1]["nu_eps"] is None  # NaN becomes null in JSON
    assert [e["latent"] for e in summary["most_ft_leaning"]] == [1, 0]
    text = format_summary(summary)
    assert "FVE base 90.0%, ft 80.0%" in text and "#0 ft-only  delta 0.95" in text
