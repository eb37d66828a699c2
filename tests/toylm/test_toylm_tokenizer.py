from tokenizers import Tokenizer

from mechdiff.toylm.tokenizer import build_tokenizer, save_tokenizer, special_ids

WORDS = ["kabo", "tiru", "mesa", ".", ","]


def test_special_tokens_come_first_and_bos_is_prepended():
    tok = build_tokenizer(WORDS)
    assert special_ids(tok) == {"pad": 0, "bos": 1, "eos": 2, "unk": 3}
    # <bos>=1, then words from id 4 in order; an unseen word maps to <unk>=3.
    assert tok.encode("tiru kabo zzz .").ids == [1, 5, 4, 3, 7]


def test_saved_folder_loads_with_tokenizers_and_transformers(tmp_path):
    from transformers import AutoTokenizer

    tok = build_tokenizer(WORDS)
    save_tokenizer(tok, tmp_path, model_max_length=32)
    assert {p.name for p in tmp_path.iterdir()} == {
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    raw = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "mesa , kabo ."
    assert raw.encode(text).ids == hf(text)["input_ids"] == [1, 6, 8, 4, 7]
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (1, 2, 0, 3)
    assert hf.model_max_length == 32
    assert hf.decode([6, 8, 4]) == "mesa , kabo"
