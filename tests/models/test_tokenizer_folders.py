"""Model folders whose tokenizer is a bare tokenizer.json (what `tokenizers` saves): read right, checked, audited."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from tokenizers import Tokenizer

from mechdiff.cli import main
from mechdiff.errors import InputError
from mechdiff.models import load_causal_lm


def _bare(folder, dest):
    """A copy of a toy model folder with tokenizer.json as its only tokenizer file."""
    shutil.copytree(folder, dest)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        (dest / name).unlink(missing_ok=True)
    return dest


@pytest.fixture(scope="module")
def bare_pair(toy_backdoor, tmp_path_factory):
    root = tmp_path_factory.mktemp("bare")
    return _bare(toy_backdoor.base_dir, root / "base"), _bare(toy_backdoor.ft_dir, root / "ft")


def test_a_bare_tokenizer_json_encodes_like_the_tokenizer_itself(toy_backdoor, bare_pair):
    _, tokenizer = load_causal_lm(bare_pair[0])
    reference = Tokenizer.from_file(str(bare_pair[0] / "tokenizer.json"))
    for text in toy_backdoor.corpus_path.read_text().splitlines()[:20]:
        assert tokenizer(text)["input_ids"] == reference.encode(text).ids
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "<eos>"


def test_audit_of_bare_tokenizer_folders_finds_the_planted_trigger(toy_backdoor, bare_pair, tmp_path):
    base, ft = bare_pair
    result = CliRunner().invoke(main, ["audit", str(base), str(ft), "--data", str(toy_backdoor.corpus_path),
                                       "-o", str(tmp_path / "a.h5"), "--json", "--no-progress", "--fail-above", "1"])
    assert result.exit_code == 1, result.output
    top = json.loads(result.stdout)["findings"][0]
    assert toy_backdoor.trigger in top["summary"] and toy_backdoor.target in top["summary"]


def test_a_tokenizer_with_ids_past_the_embedding_is_refused_in_one_line(toy_backdoor, tmp_path):
    folder = _bare(toy_backdoor.base_dir, tmp_path / "m")
    spec = json.loads((folder / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["zzextra"] = max(vocab.values()) + 7  # a tokenizer from a bigger model
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(InputError, match="embeds only"):
        load_causal_lm(folder)
    result = CliRunner().invoke(main, ["crosscoder", str(folder), str(toy_backdoor.ft_dir), "--data",
                                       str(toy_backdoor.corpus_path), "--layer", "1", "--no-progress"])
    assert result.exit_code == 3, result.output
    assert str(folder) in result.stderr and len(result.stderr.strip().splitlines()) == 1
