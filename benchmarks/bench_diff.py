"""The weight diff on a synthetic ~1B-parameter pair: time, peak memory and accuracy.

Rows: ours vs load-both-state-dicts-whole, vs stream+norms (budget: ours <= 2x), vs full SVD
of every delta (target >= 15x), vs torch.svd_lowrank of every delta with the same k (niter=2;
its accuracy beside ours: singular values above the edge against the full SVD, and the noise
level from the same tail formula on its values, at ours' rank), and peak RSS of ours on the
full pair and a 4x smaller one.
Each variant runs in its own subprocess (so peak RSS is its own) within this one run.

Where CUDA is available, `run` adds the GPU rows of issue 19 (`device_rows`) on Llama-3.2-3B-
and Llama-3.1-8B-shaped pairs: the whole `diff_checkpoints` on the device against the floor
(read each pair, move it to the device, ||D|| and ||W|| in plain torch) and against a loop of
torch.svd_lowrank(D, q=k+oversample, niter=2), each with the accuracy of the planted singular
values against their exact values, peak host RSS and peak GPU memory. The same code runs on
the CPU at a tiny size (tests/diffing/weights/test_bench_diff_device.py), so the GPU script is known to work:
    python benchmarks/bench_diff.py --device cuda --sizes 3.2B,8B [--root /dev/shm/pairs] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import format_table, make_row
from synthetic import OUT_ROOT, PairSpec, build_pair

HERE = Path(__file__).resolve().parent
# Llama-shaped pairs of issue 19 (3.61 B and 8.03 B parameters per model, untied unembedding)
# and a tiny one that runs anywhere in seconds
DEVICE_SPECS = {
    "3.2B": PairSpec(d=3072, n_layers=28, n_heads=24, n_kv=8, ffn=8192, vocab=128256, shards=2),
    "8B": PairSpec(d=4096, n_layers=32, n_heads=32, n_kv=8, ffn=14336, vocab=128256, shards=4),
    "1B": PairSpec(),
    "tiny": PairSpec(d=256, n_layers=2, n_heads=4, n_kv=2, ffn=512, vocab=1000, shards=2),
}


def _measure(mode: str, pair: Path, device: str | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        subprocess.run([sys.executable, str(HERE / "diff_worker.py"), mode, str(pair / "base"), str(pair / "ft"), str(out),
                        *([device] if device else [])], check=True)
        return json.loads(out.read_text())


def _accuracy(ours: dict, full: dict, truth: dict) -> dict:
    sv_err, sigma_err, planted_ok = 0.0, 0.0, True
    for name, sv_full in full.items():
        mine = ours["detail"][name]
        for s_ours, s_full in zip(mine["sv"][: mine["rank"]], sv_full):
            sv_err = max(sv_err, abs(s_ours - s_full) / s_full)
        true_sigma = truth[name].get("noise_sigma")
        if true_sigma:
            sigma_err = max(sigma_err, abs(mine["noise_sigma"] - true_sigma) / true_sigma)
        planted_ok &= mine["rank"] == truth[name]["rank"]
    return {"max_rel_err_sv_above_edge": sv_err, "max_rel_err_noise_sigma": sigma_err,
            "ranks_match_planted": planted_ok}


def _lowrank_accuracy(ours: dict, lowrank: dict, full: dict, truth: dict) -> dict:
    """Errors of svd_lowrank's values above the edge (at ours' rank) and of its tail noise level."""
    sv_err, sigma_err = 0.0, 0.0
    for name, sv_full in full.items():
        rank, low = ours["detail"][name]["rank"], lowrank["detail"][name]
        for s_low, s_full in zip(low["sv"][:rank], sv_full[:rank]):
            sv_err = max(sv_err, abs(s_low - s_full) / s_full)
        true_sigma = truth[name].get("noise_sigma")
        if true_sigma:
            m, n = low["shape"]
            tail = max(low["frob2"] - sum(s * s for s in low["sv"][:rank]), 0.0)
            sigma = math.sqrt(tail / (m * n - rank * (m + n)))
            sigma_err = max(sigma_err, abs(sigma - true_sigma) / true_sigma)
    return {"lowrank_max_rel_err_sv_above_edge": sv_err, "lowrank_max_rel_err_noise_sigma": sigma_err}


def _planted_error(values: dict[str, list[float]], exact: dict[str, list[float]], truth: dict) -> float:
    """Largest relative error of the planted singular values (the top `rank` of each planted tensor)."""
    err = 0.0
    for name, want in exact.items():
        rank = truth[name]["rank"]
        got = values[name][:rank]
        if len(got) < rank:
            return math.inf
        err = max(err, *(abs(g - w) / w for g, w in zip(got, want[:rank], strict=True)))
    return err


def device_rows(spec: PairSpec, device: str, root: Path = OUT_ROOT) -> list[dict]:
    """Whole `diff_checkpoints` on `device` against the floor and a `torch.svd_lowrank` loop there.

    Args:
        spec: the synthetic pair's sizes (built under `root` once, then reused).
        device: "cuda", "cuda:1" or "cpu" (the same rows; the CPU at a tiny size checks the script).
        root: where the pair is written (a tmpfs such as /dev/shm keeps it in memory).

    Returns:
        Two rows (baseline = floor, svd_lowrank loop); ours' first run (numba compiled to its
        cache) is reported, the second is timed.
    """
    pair = build_pair(spec, root)
    truth = json.loads((pair / "manifest.json").read_text())["truth"]
    exact = _measure("planted_svd", pair, device)["detail"]
    first, ours = _measure("ours", pair, device), _measure("ours", pair, device)
    ours_sv = {name: d["sv"] for name, d in ours["detail"].items()}
    common = {"device": _device_name(device), "params_per_model": spec.n_params(),
              "ours_planted_sv_max_rel_err": _planted_error(ours_sv, exact, truth),
              "ranks_match_planted": all(ours["detail"][n]["rank"] == truth[n]["rank"] for n in exact),
              "ours_peak_rss_mb": round(ours["peak_rss_mb"]), "ours_peak_gpu_mb": round(ours["peak_gpu_mb"]),
              "ours_first_run_s": round(first["seconds"], 2)}
    rows = []
    for mode, label in (("floor", "floor: read, move, ||D|| ||W|| in torch"),
                        ("lowrank_loop", "loop of torch.svd_lowrank(D, q=k+oversample, niter=2)")):
        baseline = _measure(mode, pair, device)
        extra = {"baseline_peak_rss_mb": round(baseline["peak_rss_mb"]), "baseline_peak_gpu_mb": round(baseline["peak_gpu_mb"])}
        if mode == "lowrank_loop":
            sv = {name: d["sv"] for name, d in baseline["detail"].items()}
            extra["baseline_planted_sv_max_rel_err"] = _planted_error(sv, exact, truth)
        rows.append(make_row(f"diff {spec.n_params() / 1e9:.2f}B on {device}", label, baseline["seconds"],
                             ours["seconds"], **common, **extra))
    return rows


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    return device


def gpu_rows(quick: bool, root: Path = OUT_ROOT) -> list[dict]:
    """`device_rows` on the GPU at the issue's sizes (a ~1B pair when quick); none without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    sizes = ("1B",) if quick else ("3.2B", "8B")
    return [row for size in sizes for row in device_rows(DEVICE_SPECS[size], "cuda", root)]


def run(quick: bool) -> list[dict]:
    spec = PairSpec(d=512, n_layers=4, n_heads=8, n_kv=4, ffn=1408, vocab=8000, shards=2) if quick else PairSpec()
    small = PairSpec(**{**spec.__dict__, "n_layers": max(1, spec.n_layers // 4)})
    pair, small_pair = build_pair(spec), build_pair(small)
    truth = json.loads((pair / "manifest.json").read_text())["truth"]
    # the first run after an install or a kernel edit compiles the numba kernels into their
    # on-disk cache; users pay that once, so the rows time the second run and report the first
    first = _measure("ours", pair)
    ours = _measure("ours", pair)
    rows, measured = [], {}
    for mode in ("stream_norms", "load_whole", "full_svd", "lowrank"):
        baseline = measured[mode] = _measure(mode, pair)
        row = {"name": f"diff {spec.n_params() / 1e9:.2f}B params", "baseline": mode,
               "baseline_s": baseline["seconds"], "ours_s": ours["seconds"],
               "ratio": baseline["seconds"] / ours["seconds"],
               "baseline_peak_rss_mb": round(baseline["peak_rss_mb"]), "ours_peak_rss_mb": round(ours["peak_rss_mb"]),
               "ours_first_run_s": round(first["seconds"], 2)}
        if mode == "full_svd":
            row |= _accuracy(ours, baseline["detail"], truth)
        if mode == "lowrank":
            row |= _accuracy(ours, measured["full_svd"]["detail"], truth)
            row |= _lowrank_accuracy(ours, baseline, measured["full_svd"]["detail"], truth)
        rows.append(row)
    ours_small = _measure("ours", small_pair)
    largest_fp32_mb = max(math.prod(s) for s in spec.shapes().values()) * 4 / 2**20
    rows.append({"name": "diff peak RSS: full pair vs 4x smaller", "baseline": f"ours on {small.n_params() / 1e9:.2f}B",
                 "baseline_s": ours_small["seconds"], "ours_s": ours["seconds"],
                 "ratio": ours_small["seconds"] / ours["seconds"],
                 "small_peak_rss_mb": round(ours_small["peak_rss_mb"]), "ours_peak_rss_mb": round(ours["peak_rss_mb"]),
                 "largest_tensor_fp32_mb": round(largest_fp32_mb)})
    return rows + gpu_rows(quick)


def main(argv: list[str] | None = None) -> int:
    """The device rows alone: the prepared script of a GPU session."""
    parser = argparse.ArgumentParser(description="the weight diff on a device against its floor and svd_lowrank")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", default="3.2B,8B", help=f"comma-separated, of {', '.join(DEVICE_SPECS)}")
    parser.add_argument("--root", type=Path, default=OUT_ROOT, help="where the synthetic pairs are written")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = [row for size in args.sizes.split(",") for row in device_rows(DEVICE_SPECS[size], args.device, args.root)]
    print(json.dumps({"rows": rows}, indent=1) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
