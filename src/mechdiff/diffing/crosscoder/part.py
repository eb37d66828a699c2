"""Reading a stored crosscoder back: ``open_results(path).crosscoder.module()`` rebuilds it.

Registered as the ``crosscoder`` part class; the store imports this module lazily.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mechdiff.diffing.crosscoder.config import CrosscoderConfig
from mechdiff.diffing.crosscoder.module import CrossCoder
from mechdiff.diffing.crosscoder.summary import format_summary, summary_json
from mechdiff.store.reader import Part, register_part


class CrosscoderPart(Part):
    """The /crosscoder group: per-latent table, contexts, weights and run attributes."""

    def config(self) -> CrosscoderConfig:
        """The configuration the crosscoder was trained with."""
        return CrosscoderConfig.from_dict(self.attrs["config"])

    def module(self) -> CrossCoder:
        """The trained crosscoder as a torch module (eval mode) that encodes new activations.

        Feed it raw activations through ``module.normalize`` first (the stored
        per-model scale): ``module.encode(module.normalize(x_BMD))``.
        """
        attrs, config = self.attrs, self.config()
        module = CrossCoder(attrs["n_models"], attrs["d_model"], config.dict_size, config.k, config.sparsity)
        state = {name: torch.from_numpy(np.asarray(self.array(stored))) for name, stored in (
            ("W_enc_FMD", "W_enc"), ("b_enc_F", "b_enc"), ("W_dec_FMD", "W_dec"), ("b_dec_MD", "b_dec"))}
        state["threshold"] = torch.tensor(float(attrs["threshold"]))
        state["input_scale_M"] = torch.tensor(attrs["scale"], dtype=torch.float32)
        module.load_state_dict(state)
        return module.eval()

    def latents(self) -> np.ndarray:
        """The per-latent table (latent, delta, cos, freq, mean_act, cls, nu_eps, nu_r)."""
        return self.table("latents")

    def to_json(self, top: int = 10) -> dict[str, Any]:
        """The same summary ``mechdiff crosscoder --json`` prints."""
        return summary_json(self.table("latents"), self.table("contexts"), self.attrs, top=top)

    def summary(self, top: int = 10) -> str:
        """The summary as readable lines (``mechdiff show``)."""
        return format_summary(self.to_json(top=top))


register_part("crosscoder", CrosscoderPart)
