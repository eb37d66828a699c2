#!/usr/bin/env bash
# Every GPU check of mechdiff in one call, for a lent GPU machine whose python3 already
# has torch, numba(-cuda), h5py, click, safetensors, scipy, pytest and pytest-xdist.
# Run from the repository root: bash benchmarks/gpu_session.sh   (logs under $OUT)
# 1. environment; 2. the tests marked gpu (numba.cuda on device tensors, the diff and
#    the spectra on cuda against cpu);
# 3. benchmarks/bench_gpu.py: each kernel checked against its reference at real size,
#    then timed against torch on the same GPU; 4. `mechdiff demo` with the GPU visible;
# 5. the whole test suite with the GPU visible ("auto" devices pick it);
# 6. crosscoder: our trainer vs a dense torch crosscoder at dict 16384/65536/131072, d 2304,
#    batch 4096, k 100 in fp32/TF32/bf16 (benchmarks/bench_crosscoder.py --device cuda; the same
#    script runs on a CPU with --device cpu --tiny, tested in CI).
# 7. (only when asked: GPU_STEPS="... diff") the weight diff's GPU rows of issue 19 on the
#    3.2B- and 8B-shaped pairs in /dev/shm (DIFF_SIZES; building the pairs takes minutes).
# GPU_STEPS picks steps (default: all but diff). Wheels in .whl/ are installed first, over the
# image's own: its numba-cuda 0.30.4 cannot compile a kernel under its numpy 2.5
# (numpy dropped np.row_stack), so carry numpy 2.4 there (see the issue 4 notes).
set -u
OUT=${OUT:-gpu-out}
GPU_STEPS=${GPU_STEPS:-tests bench crosscoder demo suite}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
step() { echo "== $1 ($(date +%T))"; }
wanted() { [[ " $GPU_STEPS " == *" $1 "* ]]; }

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

step environment
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
  python3 -c "import sys, torch, numba, numpy; print(sys.version.split()[0], 'torch',
  torch.__version__, 'cuda', torch.version.cuda, 'numba', numba.__version__, 'numpy',
  numpy.__version__)"
  python3 -m pip show numba-cuda 2>/dev/null | head -2
  python3 -c "from mechdiff.kernels import cuda_available; print('cuda_available', cuda_available())"
} 2>&1 | tee "$OUT/env.txt"
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.txt" 2>&1 \
  || echo "editable install failed (see install.txt); PYTHONPATH=src still serves"

if wanted tests; then
step "gpu tests"
timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests >"$OUT/gpu_tests.txt" 2>&1
echo "gpu tests rc=$?"; tail -4 "$OUT/gpu_tests.txt"
fi

if wanted bench; then
step "gpu benchmarks"
timeout 150 python3 benchmarks/run.py --only gpu --json >"$OUT/gpu_bench.json" 2>"$OUT/gpu_bench.err"
echo "gpu bench rc=$?"; tail -3 "$OUT/gpu_bench.err"
fi

if wanted crosscoder; then
step "crosscoder training rows"
timeout 300 python3 benchmarks/bench_crosscoder.py --device cuda --json >"$OUT/crosscoder_gpu.json" \
  2>"$OUT/crosscoder_gpu.err"
echo "crosscoder bench rc=$?"; tail -3 "$OUT/crosscoder_gpu.err"
fi

if wanted demo; then
step demo
timeout 90 python3 -m mechdiff demo -o "$OUT/demo" >"$OUT/demo.txt" 2>&1
echo "demo rc=$?"; tail -3 "$OUT/demo.txt"; rm -rf "$OUT/demo"
fi

if wanted diff; then
step "weight diff on the gpu"
timeout "${DIFF_TIMEOUT:-540}" python3 benchmarks/bench_diff.py --device cuda --sizes "${DIFF_SIZES:-3.2B,8B}" \
  --root /dev/shm/mechdiff-pairs --json >"$OUT/diff_gpu.json" 2>"$OUT/diff_gpu.err"
echo "diff gpu rc=$?"; tail -3 "$OUT/diff_gpu.err"; rm -rf /dev/shm/mechdiff-pairs
fi

if wanted suite; then
step "full test suite"
# one torch thread per worker: 8 workers x 16 threads each oversubscribed the 16 cores
OMP_NUM_THREADS=2 timeout "${SUITE_TIMEOUT:-300}" python3 -m pytest -v -n 8 -p no:cacheprovider \
  tests >"$OUT/full_tests.txt" 2>&1
echo "full tests rc=$?"; grep -E "FAILED|ERROR|[0-9]+ passed" "$OUT/full_tests.txt" | tail -15
fi

step summary
# the logs in $OUT are the evidence for GPU_NOTES.md: store them under benchmarks/results/
python3 - "$OUT/gpu_bench.json" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["rows"]
except Exception as exc:  # noqa: BLE001
    sys.exit(f"no benchmark rows: {exc}")
for r in rows:
    extra = {k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in r.items()
             if k in ("agrees", "max_rel_err", "max_rel_err_sums", "ours_GBps", "copy_GBps", "embedding_bag_s",
                      "dense_s", "bytes_counted")}
    base = "-" if r["baseline_s"] is None else f"{r['baseline_s'] * 1e3:9.3f} ms"
    ratio = "-" if r["ratio"] is None else f"{r['ratio']:7.2f}"
    print(f"{r['name']:<36} base {base}  ours {r['ours_s'] * 1e3:9.3f} ms  ratio {ratio}  {extra}"
          f"  [{r.get('device', '')}]")
EOF
