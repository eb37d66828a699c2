"""Reading checkpoints: sources, architecture layouts, base/ft pairing. No analysis here."""

from mechdiff.checkpoint.layout import HeadGeometry, Layout, TensorInfo, select_layout
from mechdiff.checkpoint.pairing import Pairing, TensorPair, pair_sources
from mechdiff.checkpoint.peft import LoraSource
from mechdiff.checkpoint.sources import TensorMeta, TensorSource, open_source

__all__ = [
    "HeadGeometry",
    "Layout",
    "LoraSource",
    "Pairing",
    "TensorInfo",
    "TensorMeta",
    "TensorPair",
    "TensorSource",
    "open_source",
    "pair_sources",
    "select_layout",
]
