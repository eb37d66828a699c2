"""Model ids from a fake local Hugging Face cache: resolved offline, uncached ones refused with exit 3."""

from __future__ import annotations

import json

from ckpt_builders import LLAMA_CONFIG, drift, llama_state, save_folder
from click.testing import CliRunner

from mechdiff.checkpoint.hub_cache import resolve_model
from mechdiff.cli import main

COMMITS = {"main": "a" * 40, "v2": "b" * 40}


def _cache_model(cache, repo, state, revisions=("main",)):
    """Lay a model out as the Hugging Face tools do: blobs, snapshots/<commit> of symlinks, refs/<name>."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    for revision in revisions:
        staged = save_folder(folder / "staging" / revision, state, LLAMA_CONFIG)
        snapshot = folder / "snapshots" / COMMITS[revision]
        snapshot.mkdir(parents=True)
        for file in staged.iterdir():
            blob = folder / "blobs" / f"{revision}-{file.name}"
            blob.parent.mkdir(exist_ok=True)
            file.rename(blob)
            (snapshot / file.name).symlink_to(blob)
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / revision).write_text(COMMITS[revision])
    return folder


def test_model_ids_resolve_from_the_cache_and_diff(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    state = llama_state(0)
    _cache_model(cache, "org/base", state)
    _cache_model(cache, "org/base-ft", drift(state, 0.01), revisions=("main", "v2"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # no local folder called org/
    assert resolve_model("org/base-ft@v2").name == COMMITS["v2"]
    assert resolve_model(f"org/base-ft@{COMMITS['v2']}").name == COMMITS["v2"]
    result = CliRunner().invoke(main, ["diff", "org/base", "org/base-ft@v2", "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["base"].endswith(COMMITS["main"]) and doc["ft"].endswith(COMMITS["v2"])
    assert len(doc["changes"]) == len(state)


def test_hf_home_is_used_when_hub_cache_is_unset(tmp_path, monkeypatch):
    _cache_model(tmp_path / "home" / "hub", "org/base", llama_state(0))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert resolve_model("org/base") == tmp_path / "home" / "hub" / "models--org--base" / "snapshots" / COMMITS["main"]


def test_uncached_ids_and_revisions_exit_3_with_one_line(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    _cache_model(cache, "org/base", llama_state(0))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    for ft, fragment in (("org/never-downloaded", "not in the local Hugging Face cache"),
                         ("org/base@v9", "revision 'v9' of org/base is not in the local")):
        result = CliRunner().invoke(main, ["diff", "org/base", ft, "--no-progress"])
        assert result.exit_code == 3, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], lines
