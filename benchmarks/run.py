"""Run mechdiff benchmarks: `python benchmarks/run.py [--quick] [--json] [--only NAME]`.

Discovers `benchmarks/bench_*.py`; each exposes `run(quick: bool) -> list[dict]` whose
rows carry name, baseline, baseline_s, ours_s and ratio (= baseline_s / ours_s).
Prints a table (or one JSON document with --json) on stdout; progress and failures go
to stderr. Exit status 1 when a benchmark module raised.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

from harness import discover, format_table, load_module, validate_row

BENCH_DIR = Path(__file__).resolve().parent


def main(argv: list[str] | None = None, bench_dir: Path = BENCH_DIR) -> int:
    """Parse arguments, run the selected benchmarks, print results; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI smoke runs")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only bench_NAME.py (repeatable)")
    args = parser.parse_args(argv)

    paths = discover(bench_dir, args.only)
    if not paths:
        print(f"no benchmark matches {args.only}", file=sys.stderr)
        return 2
    rows, failed = [], []
    for path in paths:
        start = time.perf_counter()
        print(f"running {path.stem} ...", file=sys.stderr, flush=True)
        try:
            module_rows = load_module(path).run(args.quick)
            rows.extend(validate_row(row, path.stem) for row in module_rows)
        except Exception:  # noqa: BLE001 (one broken benchmark must not hide the rest)
            failed.append(path.stem)
            traceback.print_exc(file=sys.stderr)
        print(f"  {path.stem}: {time.perf_counter() - start:.1f} s", file=sys.stderr)

    if args.json:
        json.dump({"quick": args.quick, "rows": rows, "failed": failed}, sys.stdout, indent=1)
        print()
    else:
        print(format_table(rows))
        if failed:
            print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
