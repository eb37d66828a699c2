"""Fuzzing the safetensors reader: every hostile file is read correctly or refused with one line."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from safetensors_fuzz import check_file, safetensors_files


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(safetensors_files())
def test_hostile_safetensors_never_crash(case):
    with tempfile.TemporaryDirectory() as tmp:
        assert check_file(Path(tmp) / "f.safetensors", *case) in ("ok", "refused")
