"""Reading every checkpoint format the same way, and refusing broken or hostile files."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from ckpt_builders import LLAMA_CONFIG, llama_state, save_folder
from safetensors.torch import save_file

from mechdiff.checkpoint import open_source
from mechdiff.checkpoint.safetensors_header import read_header
from mechdiff.errors import InputError


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "bin", "bin-sharded"])
def test_every_folder_format_gives_the_same_tensors(tmp_path, fmt):
    state = llama_state(0)
    source = open_source(save_folder(tmp_path / fmt, state, LLAMA_CONFIG, fmt))
    assert sorted(source.names()) == sorted(state)
    assert source.config["num_key_value_heads"] == 2
    for name, tensor in state.items():
        assert source.meta(name).shape == tuple(tensor.shape)
        torch.testing.assert_close(source.get(name), tensor, rtol=0, atol=0)


def test_single_files_and_their_dtypes(tmp_path):
    tensors = {
        "a": torch.randn(3, 5).to(torch.bfloat16),
        "b": torch.randn(4).to(torch.float16),
        "c": torch.randn(2, 2).to(torch.float8_e4m3fn),
        "d": torch.arange(6, dtype=torch.int32),
    }
    save_file(tensors, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {"x": torch.ones(2)}}, tmp_path / "w.pt")
    st = open_source(tmp_path / "w.safetensors")
    assert [st.meta(n).dtype for n in "abcd"] == ["BF16", "F16", "F8_E4M3", "I32"]
    assert st.get("a").dtype == torch.bfloat16 and st.get("c").dtype == torch.float8_e4m3fn
    pt = open_source(tmp_path / "w.pt")
    assert pt.names() == ["x"]  # nested {"state_dict": ...} is unwrapped


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.bin", "wb") as fh:
        pickle.dump({"w": _Payload(str(marker))}, fh)
    torch.save({"w": torch.ones(1), "x": _Payload(str(marker))}, tmp_path / "evil2.pt")
    for name in ("evil.bin", "evil2.pt"):
        with pytest.raises(InputError, match="refused"):
            open_source(tmp_path / name)
    assert not marker.exists()


def _write_raw(path, header: bytes, body: bytes = b"", declared: int | None = None):
    path.write_bytes(struct.pack("<Q", len(header) if declared is None else declared) + header + body)
    return path


@pytest.mark.parametrize(
    ("header", "body", "declared", "message"),
    [
        (b"{}", b"", 10**9, "truncated"),
        (b"not json", b"", None, "not valid JSON"),
        (b'\xff\xfe{"a": 1}', b"", None, "not UTF-8"),
        (json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode(), b"1234", None, "spans bytes"),
        (json.dumps({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode(), b"12345678", None, "occupies"),
        (json.dumps({"a": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}).encode(), b"12345678", None, "unknown dtype"),
        (json.dumps({"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}).encode(), b"12345678", None, "occupies"),
        (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', b"12345678", None, "duplicate"),
        (json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                     "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode(), b"x" * 12, None, "overlap"),
        (json.dumps({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}).encode(), b"12345678", None, "invalid shape"),
        (b"[1, 2]", b"", None, "JSON object"),
    ],
)
def test_broken_safetensors_headers_are_refused_clearly(tmp_path, header, body, declared, message):
    path = _write_raw(tmp_path / "bad.safetensors", header, body, declared)
    with pytest.raises(InputError, match=message):
        open_source(path)


def test_empty_and_tiny_files(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "empty.bin").write_bytes(b"")
    (tmp_path / "junk.bin").write_bytes(b"PK\x03\x04 not really a zip")
    for name, message in (("empty.safetensors", "shorter"), ("empty.bin", "empty"), ("junk.bin", "not a readable")):
        with pytest.raises(InputError, match=message):
            open_source(tmp_path / name)


def test_folder_without_weights_and_adapter_folder(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(InputError, match="holds no model weights"):
        open_source(tmp_path / "nothing")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(InputError, match="--adapter"):
        open_source(tmp_path / "adapter")


def test_shard_index_cannot_escape_its_folder(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../../etc/passwd"}}))
    with pytest.raises(InputError, match="leaves the checkpoint folder"):
        open_source(folder)


def test_fingerprint_follows_the_header(tmp_path):
    save_file({"a": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    save_file({"a": torch.zeros(3)}, str(tmp_path / "y.safetensors"))
    fx, fy = read_header(tmp_path / "x.safetensors").fingerprint, read_header(tmp_path / "y.safetensors").fingerprint
    assert fx != fy and len(fx) == 16


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "bin-sharded"])
def test_read_tensor_into_a_reused_buffer_gives_the_same_tensors(tmp_path, fmt):
    from mechdiff.checkpoint.sources import read_tensor

    state = llama_state(0)
    source = open_source(save_folder(tmp_path / fmt, state, LLAMA_CONFIG, fmt))
    buffer = bytearray(1 << 20)  # larger than every tensor: reused for each read
    for name, tensor in state.items():
        got = read_tensor(source, name, buffer)
        torch.testing.assert_close(got, tensor, rtol=0, atol=0)
        if fmt != "bin-sharded":  # safetensors reads land in the buffer itself
            assert got.untyped_storage().data_ptr() == torch.frombuffer(buffer, dtype=torch.uint8).data_ptr()
    small = bytearray(3)  # too small: a fresh buffer is read instead, the small one is untouched
    name = next(iter(state))
    torch.testing.assert_close(read_tensor(source, name, small), state[name], rtol=0, atol=0)
    assert small == bytearray(3)
