"""SIGKILL and Ctrl-C in the middle of a diff: never a half-written result, and a rerun works."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from ckpt_builders import LLAMA_CONFIG, drift, llama_state, low_rank, save_folder

from mechdiff.results import open_results

# big enough (~60M parameters, bf16) that the diff runs for seconds even on an idle machine
SIZES = {"n_layers": 6, "d": 768, "n_heads": 12, "n_kv": 4, "head_dim": 64, "ffn": 3072, "vocab": 4000}
SLOW = ["--rank", "256"]  # 256 triplets of every matrix: several seconds of work to interrupt
CFG = {**LLAMA_CONFIG, "hidden_size": 768, "num_attention_heads": 12, "num_key_value_heads": 4, "head_dim": 64,
       "num_hidden_layers": 6, "intermediate_size": 3072, "vocab_size": 4000}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    state = llama_state(0, **SIZES)
    ft = drift(state, 0.02)
    for name, tensor in state.items():  # structure everywhere: every matrix gets the full analysis
        if tensor.ndim == 2:
            ft[name] = ft[name] + low_rank(tuple(tensor.shape), 4, 0.05 * float(tensor.norm()))
    ft = {k: v.to(torch.bfloat16) for k, v in ft.items()}
    state = {k: v.to(torch.bfloat16) for k, v in state.items()}
    return save_folder(root / "base", state, CFG), save_folder(root / "ft", ft, CFG)


def _start(base, ft, out):
    """The diff as started from a terminal, where Ctrl-C reaches it.

    A job started in the background (CI, `make test &`) ignores SIGINT and its children inherit that;
    a Python handler in this process becomes the default action in the child after exec.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, "-m", "mechdiff", "diff", str(base), str(ft), "-o", str(out), *SLOW],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    finally:
        signal.signal(signal.SIGINT, before)


def _wait_until_diffing(proc, timeout=120.0):
    """Block until the progress bar shows (the diff has been running for a second)."""
    deadline = time.monotonic() + timeout
    seen = b""
    while time.monotonic() < deadline and proc.poll() is None:
        seen += os.read(proc.stderr.fileno(), 256)
        if b"diff:" in seen:
            return
    pytest.fail(f"diff never showed progress: {seen[-300:]!r}")


def _check_rerun(base, ft, out):
    done = subprocess.run([sys.executable, "-m", "mechdiff", "diff", str(base), str(ft), "-o", str(out), *SLOW],
                          capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    with open_results(out) as res:
        assert len(res.weights.table("changes")) == len(llama_state(0, n_layers=6))


def test_sigkill_mid_run_leaves_no_result_and_keeps_the_old_one(pair, tmp_path):
    base, ft = pair
    out = tmp_path / "out.h5"
    _check_rerun(base, ft, out)
    before = out.read_bytes()
    proc = _start(base, ft, out)
    _wait_until_diffing(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert out.read_bytes() == before  # the earlier result is untouched
    (tmp_path / "out.h5.tmp").unlink(missing_ok=True)  # at most a removable temp file
    out.unlink()
    proc = _start(base, ft, out)
    _wait_until_diffing(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not out.exists()
    _check_rerun(base, ft, out)


def test_ctrl_c_exits_with_a_short_message_and_no_temp_files(pair, tmp_path):
    base, ft = pair
    out = tmp_path / "out.h5"
    proc = _start(base, ft, out)
    _wait_until_diffing(proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()[-500:]
    last = err.decode().strip().splitlines()[-1]
    assert "interrupted" in last and "Traceback" not in err.decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sigkill_during_crosscoder_training_then_resume(toy_backdoor, tmp_path):
    out, ckpt = tmp_path / "cc.h5", tmp_path / "ckpt"
    args = [sys.executable, "-m", "mechdiff", "crosscoder", str(toy_backdoor.base_dir), str(toy_backdoor.ft_dir),
            "--data", str(toy_backdoor.corpus_path), "--layer", "1", "--tokens", str(256 * 4000),
            "--checkpoint-dir", str(ckpt), "--checkpoint-every", "50", "-o", str(out), "--json"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (ckpt / "latest.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before a checkpoint was seen"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not out.exists()
    saved = int(json.loads((ckpt / "latest.json").read_text())["latest"].split("-")[1])
    assert saved > 0 and saved % 50 == 0
    done = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-1500:]
    # the training bar starts where the checkpoint left off: only the remaining steps run
    first = re.search(r"crosscoder:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)", done.stderr)
    assert first is not None, done.stderr[-1500:]
    assert int(first.group(1)) == saved < int(first.group(2))
    assert json.loads(done.stdout)["counts"]
    with open_results(out) as res:
        assert len(res.crosscoder.table("latents")) > 0
