"""The weight diff's GPU path forced onto the CPU: reading one pair ahead and statistics in torch ops
give the host path's results, and errors or Ctrl-C during a read ahead end the diff as without it."""

from __future__ import annotations

import functools
import signal
import threading

import h5py
import numpy as np
import pytest
import torch
from ckpt_builders import LLAMA_DOWN, LLAMA_Q0, planted_llama, save_folder
from click.testing import CliRunner

from mechdiff.api import diff_checkpoints
from mechdiff.checkpoint import fingerprint, open_source
from mechdiff.cli import main
from mechdiff.diffing.weights import diff as diff_module
from mechdiff.diffing.weights.diff import DiffConfig

DOWN, Q0 = LLAMA_DOWN, LLAMA_Q0
# embeddings (100 x 64 float32 = 25 KB) above this stream in row blocks: those pairs skip the read-ahead
STREAM_SMALL = {"stream_above_mb": 0.02, "block_mb": 0.005}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A llama pair with 1-3% drift, a rank-1 edit of one MLP matrix and a rank-2 edit of one q head."""
    tmp = tmp_path_factory.mktemp("planted")
    state, ft, cfg = planted_llama(down_rel=0.02, head_rel=0.03)
    ft["model.layers.0.mlp.up_proj.weight"][3, 5] = float("nan")  # a non-finite value on the way
    return save_folder(tmp / "base", state, cfg), save_folder(tmp / "ft", ft, cfg)


def _run(planted, tmp_path, name: str, **config) -> tuple[object, h5py.File]:
    fingerprint._DIGESTS.clear()  # digests must come from this run's reads, not an earlier one's
    out = tmp_path / f"{name}.h5"
    result = diff_checkpoints(*planted, out=out, config=DiffConfig(device="cpu", **config), progress=False)
    return result, h5py.File(out, "r")


def _datasets(f: h5py.File) -> dict[str, np.ndarray]:
    found = {}
    f.visititems(lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return found


def _fingerprints(f: h5py.File) -> dict[str, str]:
    return {k: v for k, v in f.attrs.items() if k.endswith("fingerprint")}


@pytest.mark.parametrize("streamed", [False, True])
def test_read_ahead_gives_the_same_file_bit_for_bit(planted, tmp_path, streamed):
    extra = STREAM_SMALL if streamed else {}
    _, off = _run(planted, tmp_path, "off", read_ahead=False, **extra)
    result, on = _run(planted, tmp_path, "on", read_ahead=True, **extra)
    assert {c.tensor: c.rank for c in result.changes[:2]} == {DOWN: 1, Q0: 2}
    assert _fingerprints(on) == _fingerprints(off) and len(_fingerprints(on)) == 2
    want, got = _datasets(off), _datasets(on)
    assert sorted(got) == sorted(want) and len(want) > 5
    for name, values in want.items():
        np.testing.assert_array_equal(got[name], values, err_msg=name)


def test_statistics_on_the_device_match_the_host_loop(planted, tmp_path):
    host_result, host = _run(planted, tmp_path, "host", read_ahead=False, device_statistics=False)
    dev_result, dev = _run(planted, tmp_path, "dev", read_ahead=True, device_statistics=True)
    assert _fingerprints(dev) == _fingerprints(host)
    assert [c.tensor for c in dev_result.changes] == [c.tensor for c in host_result.changes]
    for a, b in zip(dev_result.changes, host_result.changes, strict=True):
        assert (a.rank, a.nan_ft, a.inf_ft, a.max_abs_delta, a.n_intruders) == (b.rank, b.nan_ft, b.inf_ft,
                                                                                b.max_abs_delta, b.n_intruders)
        assert a.norm_delta == pytest.approx(b.norm_delta, rel=1e-9) and a.score == pytest.approx(b.score, rel=1e-5)
    assert [(h.layer, h.head, h.rank) for h in dev_result.heads] == [(h.layer, h.head, h.rank) for h in host_result.heads]
    want, got = _datasets(host), _datasets(dev)
    for name, values in want.items():
        if values.dtype.names is None and values.dtype.kind == "f":
            np.testing.assert_allclose(got[name], values, rtol=1e-4, atol=1e-6, err_msg=name)
    assert any("NaN" in w for w in dev_result.warnings)


@pytest.fixture
def failing_read(monkeypatch):
    """Reading DOWN fails as a disk error would (the file passed every check when it was opened)."""
    from mechdiff.diffing.weights import reading
    from mechdiff.errors import InputError

    def read_tensor(source, name, buffer, rows):
        if name == DOWN:
            raise InputError(f"{source.label}: cannot read tensor {name!r}: Input/output error")
        return real(source, name, buffer, rows)

    real = reading.read_tensor
    monkeypatch.setattr(reading, "read_tensor", read_tensor)


@pytest.mark.parametrize("ahead", [False, True])
def test_a_read_error_is_the_same_one_line_error_and_no_file(planted, failing_read, tmp_path, monkeypatch, ahead):
    monkeypatch.setattr(diff_module, "DiffConfig", functools.partial(DiffConfig, read_ahead=ahead,
                                                                     device_statistics=ahead))
    out = tmp_path / "out.h5"
    result = CliRunner().invoke(main, ["diff", *map(str, planted), "-o", str(out), "--device", "cpu", "--no-progress"])
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert lines == [f"mechdiff: error: {planted[1]}: cannot read tensor {DOWN!r}: Input/output error"]
    assert not list(tmp_path.glob("out.h5*"))  # neither the file nor its .tmp
    assert not [t for t in threading.enumerate() if t.name.startswith("mechdiff-ahead") and t.is_alive()]


def test_ctrl_c_during_the_analysis_stops_the_reading_thread_and_writes_nothing(planted, tmp_path, monkeypatch):
    calls = []
    real = diff_module._analyze_pair

    def analyze(*args, **kwargs):  # Ctrl-C while the third pair is analyzed and the fourth is being read
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(diff_module, "_analyze_pair", analyze)
    out = tmp_path / "out.h5"
    with pytest.raises(KeyboardInterrupt):
        diff_checkpoints(*planted, out=out, config=DiffConfig(device="cpu", read_ahead=True), progress=False)
    assert len(calls) == 3 and not list(tmp_path.glob("out.h5*"))
    assert not [t for t in threading.enumerate() if t.name.startswith("mechdiff-ahead") and t.is_alive()]


def test_ctrl_c_while_waiting_for_a_slow_read_ends_the_diff(planted, monkeypatch):
    from mechdiff.diffing.weights import reading

    waiting, release = threading.Event(), threading.Event()
    real = reading.read_tensor

    def slow(source, name, buffer, rows):  # a read that takes long: the main thread waits for it
        if name == DOWN:
            waiting.set()
            release.wait(10)
        return real(source, name, buffer, rows)

    def ctrl_c():
        waiting.wait(10)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        release.set()

    monkeypatch.setattr(reading, "read_tensor", slow)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background run may ignore SIGINT
    try:
        threading.Thread(target=ctrl_c, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            diff_checkpoints(*planted, config=DiffConfig(device="cpu", read_ahead=True), progress=False)
    finally:
        signal.signal(signal.SIGINT, previous)
        release.set()
    assert not [t for t in threading.enumerate() if t.name.startswith("mechdiff-ahead") and t.is_alive()]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_read_ahead_and_device_statistics_match_the_host_path(planted, tmp_path):
    host_result, host = _run(planted, tmp_path, "host", read_ahead=False, device_statistics=False)
    fingerprint._DIGESTS.clear()
    out = tmp_path / "cuda.h5"
    cuda_result = diff_checkpoints(*planted, out=out, config=DiffConfig(device="cuda", **STREAM_SMALL), progress=False)
    assert _fingerprints(h5py.File(out, "r")) == _fingerprints(host)
    for a, b in zip(cuda_result.changes, host_result.changes, strict=True):
        assert (a.tensor, a.rank, a.nan_ft, a.max_abs_delta) == (b.tensor, b.rank, b.nan_ft, b.max_abs_delta)
        assert a.norm_delta == pytest.approx(b.norm_delta, rel=1e-9) and a.score == pytest.approx(b.score, rel=1e-3)


def test_a_stream_of_no_pairs_reads_nothing(planted):
    from mechdiff.diffing.weights.reading import PairStream

    base, ft = open_source(planted[0]), open_source(planted[1])
    for ahead in (False, True):
        with PairStream(base, ft, [], lambda p: False, None, ahead) as stream:
            assert list(stream) == []
