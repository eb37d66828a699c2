"""Seed sweep of a toy SPD recipe: alive components per matrix, MMCS and time at each seed.

Backs the claim in weightdecomp/toys/recipes.py about TMS 40-10 (40/40 alive per matrix,
MMCS >= 0.99998 at seeds 0-7). Not a ``bench_*`` module: eight TMS 40-10 runs take about an
hour on a 2-core machine, so benchmarks/run.py does not run it; run it by hand:

    PYTHONPATH=src python benchmarks/sweep_tms_seeds.py --toy tms-40-10 --seeds 0-7 [--steps N]

Prints one JSON line per seed and a summary line (worst MMCS, seeds with every matrix at
exactly the planted feature count). Threads: OMP_NUM_THREADS / torch defaults, as set by the
caller; the line records torch's thread count and the load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import torch

from mechdiff.weightdecomp.toys.recipes import TOY_CONFIGS, run_toy


def seeds_arg(text: str) -> list[int]:
    """'0-7' or '0,3,5' -> the list of seeds."""
    if "-" in text:
        lo, hi = (int(v) for v in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", default="tms-40-10", choices=sorted(TOY_CONFIGS))
    parser.add_argument("--seeds", type=seeds_arg, default=seeds_arg("0-7"))
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's steps (a shorter check)")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        config = dataclasses.replace(TOY_CONFIGS[args.toy], seed=seed)
        if args.steps:
            config = dataclasses.replace(config, steps=args.steps)
        report = run_toy(args.toy, config, seed=seed, progress=False)
        row = {"toy": args.toy, "seed": seed, "steps": report.steps, "n_features": report.n_features,
               "n_alive_per_module": report.n_alive_per_module, "mmcs": report.mmcs, "ml2r": report.ml2r,
               "seconds": round(report.seconds, 1), "threads": torch.get_num_threads(),
               "load_avg": round(os.getloadavg()[0], 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    exact = [r["seed"] for r in rows if all(n == r["n_features"] for n in r["n_alive_per_module"].values())]
    print(json.dumps({"summary": args.toy, "seeds": args.seeds, "all_matrices_exact_at": exact,
                      "worst_mmcs": min(r["mmcs"] for r in rows)}))


if __name__ == "__main__":
    main()
