"""Tiny trained language models with a planted behaviour, for demos and tests.

``build_pair(out_dir)`` trains a base model on a made-up language and a fine-tune
of it (backdoor, diffuse drift, or LoRA backdoor) and writes both as Hugging Face
folders plus an audit corpus. transformers is imported only when a model is built.
"""

from mechdiff.toylm.build import VARIANTS, ToyPair, build_pair, load_pair
from mechdiff.toylm.language import (
    Language,
    LanguageConfig,
    make_language,
    sample_documents,
)
from mechdiff.toylm.model import ToyLMSize
from mechdiff.toylm.train import ToySteps

__all__ = [
    "VARIANTS", "Language", "LanguageConfig", "ToyLMSize", "ToyPair", "ToySteps", "build_pair",
    "load_pair", "make_language", "sample_documents",
]
