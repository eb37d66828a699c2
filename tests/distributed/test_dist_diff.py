"""The diff under torchrun with 2 CPU ranks (gloo) equals the single-process diff."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from ckpt_builders import LLAMA_CONFIG, drift, llama_state, low_rank, save_folder

from mechdiff.api import diff_checkpoints
from mechdiff.distributed import shard_by_size
from mechdiff.results import open_results


def test_shard_by_size_balances_largest_first():
    sizes = [10, 1, 7, 3, 3, 2]
    shards = shard_by_size(sizes, 2)
    assert sorted(i for s in shards for i in s) == list(range(6))
    loads = [sum(sizes[i] for i in s) for s in shards]
    assert sorted(loads) == [13, 13]
    assert shard_by_size(sizes, 1) == [list(range(6))]


def test_two_gloo_ranks_match_one_process(tmp_path):
    state = llama_state(0)
    ft = drift(state, 0.02, seed=4)
    name = "model.layers.1.mlp.up_proj.weight"
    ft[name] = ft[name] + low_rank((128, 64), 2, 0.03 * float(state[name].norm()))
    base_dir = save_folder(tmp_path / "b", state, LLAMA_CONFIG)
    ft_dir = save_folder(tmp_path / "f", ft, LLAMA_CONFIG)
    single = diff_checkpoints(base_dir, ft_dir, progress=False).to_json()
    out = tmp_path / "dist.h5"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "mechdiff", "diff", str(base_dir), str(ft_dir), "-o", str(out), "--json", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr  # whole: the failing rank's own message comes first
    dist = json.loads(done.stdout)  # only rank 0 printed
    assert [c["tensor"] for c in dist["changes"]] == [c["tensor"] for c in single["changes"]]
    assert dist["changes"][0]["tensor"] == name and dist["changes"][0]["rank"] == 2
    for a, b in zip(dist["changes"], single["changes"]):
        assert a["rank"] == b["rank"]
        assert a["score"] == pytest.approx(b["score"], rel=1e-4, abs=1e-9)
        assert a["rel_delta"] == pytest.approx(b["rel_delta"], rel=1e-6)
    assert [(h["layer"], h["head"]) for h in dist["heads"]][:3] == [(h["layer"], h["head"]) for h in single["heads"]][:3]
    with open_results(out) as res:
        assert len(res.weights.table("changes")) == len(single["changes"])
