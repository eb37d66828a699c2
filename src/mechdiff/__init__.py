"""mechdiff: find the mechanisms that changed between a base checkpoint and its fine-tune."""

__version__ = "0.1.0"
