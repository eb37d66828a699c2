"""The crosscoder under torchrun with 2 CPU ranks (gloo) against one process.

With L1 sparsity every row's code depends on that row alone, so averaging the ranks'
gradients must reproduce the single-process training step for step, and the reduced
evaluation must equal the single-process one. BatchTopK selects within each rank's
local batch (documented), so there only the ranks' agreement and the quality are checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mechdiff.results import open_results

SCRIPT = Path(__file__).with_name("crosscoder_ranks.py")


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr  # whole: the failing rank's own message comes first
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    for sparsity in ("l1", "batchtopk"):
        _run([sys.executable, str(SCRIPT), str(out / f"single_{sparsity}"), sparsity])
        _run(_torchrun(str(SCRIPT), str(out / f"dist_{sparsity}"), sparsity))
    _run(_torchrun(str(SCRIPT), str(out / "resumed_batchtopk"), "batchtopk", "resume"))
    return lambda name, rank=0: dict(np.load(out / name / f"rank{rank}.npz"))


def test_l1_training_and_evaluation_equal_one_process(runs):
    single, dist = runs("single_l1"), runs("dist_l1")
    for name in ("W_enc_FMD", "W_dec_FMD", "b_enc_F", "b_dec_MD", "loss", "fve", "latents_mean_act", "top_act"):
        np.testing.assert_allclose(dist[name], single[name], rtol=1e-4, atol=1e-5, err_msg=name)
    for name in ("n_rows", "rows_since_fired", "latents_freq", "top_doc", "top_pos"):
        np.testing.assert_array_equal(dist[name], single[name], err_msg=name)
    # the ft-only features give latents with latent-scaling ratios, summed over both ranks' rows
    measured = ~np.isnan(single["latents_nu_r"])
    assert measured.any()
    np.testing.assert_allclose(dist["latents_nu_r"][measured], single["latents_nu_r"][measured], rtol=1e-3, atol=1e-4)
    # both ranks' documents made it into the merged top examples
    assert {d % 2 for d in dist["top_doc"][dist["top_doc"] >= 0]} == {0, 1}


def test_batchtopk_ranks_agree_and_match_quality(runs):
    rank0, rank1, single = runs("dist_batchtopk"), runs("dist_batchtopk", 1), runs("single_batchtopk")
    for name in ("W_enc_FMD", "W_dec_FMD", "threshold", "rows_since_fired", "top_doc"):
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)
    assert rank0["n_rows"] == single["n_rows"]
    np.testing.assert_allclose(rank0["fve"], single["fve"], atol=0.02)
    assert abs(float(rank0["l0"]) - float(single["l0"])) < 0.25 * float(single["l0"])


def test_two_ranks_resume_from_rank_0_checkpoint_exactly(runs):
    resumed, whole = runs("resumed_batchtopk", 1), runs("dist_batchtopk", 1)
    # 150 steps stopped after 60: each rank (rank 1 reads rank 0's checkpoint) runs only steps 61..150
    for rank in (0, 1):
        np.testing.assert_array_equal(runs("resumed_batchtopk", rank)["steps_first"], np.arange(1, 61))
        np.testing.assert_array_equal(runs("resumed_batchtopk", rank)["steps"], np.arange(61, 151))
    np.testing.assert_array_equal(whole["steps"], np.arange(1, 151))
    for name in ("W_enc_FMD", "W_dec_FMD", "threshold", "rows_since_fired", "top_act", "top_doc"):
        np.testing.assert_array_equal(resumed[name], whole[name], err_msg=name)


def test_crosscoder_command_under_torchrun(toy_backdoor, tmp_path):
    out = tmp_path / "cc.h5"
    args = ["crosscoder", str(toy_backdoor.base_dir), str(toy_backdoor.ft_dir), "--data", str(toy_backdoor.corpus_path),
            "--layer", "1", "--tokens", str(256 * 60), "--dict-size", "64", "--k", "8", "--json", "--no-progress"]
    dist = json.loads(_run(_torchrun("-m", "mechdiff", *args, "-o", str(out))).stdout)  # rank 0 alone prints
    single = json.loads(_run([sys.executable, "-m", "mechdiff", *args, "-o", str(tmp_path / "one.h5")]).stdout)
    assert sum(dist["counts"].values()) == sum(single["counts"].values()) == 64
    with open_results(out) as res, open_results(tmp_path / "one.h5") as one:
        attrs, contexts, one_attrs = res.crosscoder.attrs, res.crosscoder.table("contexts"), one.crosscoder.attrs
    # the corpus is smaller than the budget: both runs read all of it, split or not
    assert attrs["n_tokens"] == one_attrs["n_tokens"] > 5000
    assert abs(attrs["fve_ft"] - one_attrs["fve_ft"]) < 0.05 and min(attrs["fve_base"], attrs["fve_ft"]) > 0.5
    # contexts come from both ranks' documents, each with its text
    assert {int(d) % 2 for d in contexts["doc"]} == {0, 1}
    assert all(len(str(t)) > 0 for t in contexts["text"])


def test_audit_under_torchrun_finds_the_backdoor(toy_backdoor, tmp_path):
    out = tmp_path / "a.h5"
    cmd = _torchrun("-m", "mechdiff", "audit", str(toy_backdoor.base_dir), str(toy_backdoor.ft_dir), "--data",
                    str(toy_backdoor.corpus_path), "-o", str(out), "--json", "--no-progress", "--fail-above", "1")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 1, done.stderr  # the gate fails: the planted backdoor scores above 1
    doc = json.loads(done.stdout)  # one document: rank 0 alone prints
    top = doc["findings"][0]
    assert toy_backdoor.trigger in top["summary"] and toy_backdoor.target in top["summary"]
    assert {"behaviour", "weights", "heads", "crosscoder"} <= {lens["name"] for lens in doc["lenses"] if lens["ran"]}
    with open_results(out) as res:
        assert {"weights", "heads", "audit", "crosscoder"} <= set(res.parts)
        assert res.audit.attrs["verdict"] == "findings"
