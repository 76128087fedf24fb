#!/usr/bin/env bash
# GPU benchmark run on a machine with one NVIDIA H100 or H200 (jax[cuda] installed, NO optuna, 10-minute
# limit per command). From the repository root:
#
#     bash benchmarks/gpu_smoke.sh            # results under $OUT (or a fresh temp dir)
#
# It runs benchmarks/run.py --gpu (numpy, JAX on the host CPU and JAX on the GPU in the same run, the ceilings
# (bandwidth, threefry words/s, normals/s; the stated estimate from the data sheet), the model
# alone, the planner, the naive planner, Sobol, a chunk-size sweep and float64), writing the JSON after every
# section so that a run cut short still leaves its figures, then the memory-versus-N check of simulate on the
# GPU, and prints a short table last. Optuna is skipped (not installed there) and recorded as skipped.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # y90opt from this checkout, installed or not
export XLA_PYTHON_CLIENT_PREALLOCATE=false            # grow GPU memory as needed (peak is then measurable)

{
  date
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
  "$PY" -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())" 2>&1
  "$PY" -c "import y90opt, numpy, scipy, xarray; print('y90opt deps ok')" 2>&1
} | tee "$OUT/gpu_env.txt"

# main run: about 4-6 minutes on an H100 (compiles included); stopped at 7 minutes whatever happens
timeout 420 "$PY" benchmarks/run.py --gpu --json --repeats 3 --out "$OUT/bench_gpu.json" \
  --sections forward,ceilings,model,plan,naive,optuna,sobol,chunks,voxelbatch --sobol-n 65536 \
  > "$OUT/bench_gpu.stdout.json" 2> "$OUT/bench_gpu.log"
rc=$?
echo "run.py exit status $rc" >> "$OUT/bench_gpu.log"

# memory of simulate versus N on the GPU (one subprocess per N; host RSS and device peak); at most 2 minutes
timeout 120 "$PY" benchmarks/memory.py --json --chunk 4194304 --n 1e3 1e6 1e8 1e9 \
  > "$OUT/memory_gpu.json" 2>> "$OUT/bench_gpu.log"
echo "memory.py exit status $?" >> "$OUT/bench_gpu.log"

tail -n 40 "$OUT/bench_gpu.log"
echo
echo "== memory (simulate, GPU) =="
"$PY" -c "import sys, json; sys.path.insert(0, 'benchmarks'); import memory
for line in open(sys.argv[1]):
    print(memory.describe(json.loads(line)))" "$OUT/memory_gpu.json" 2>/dev/null || cat "$OUT/memory_gpu.json"
echo
echo "== summary (results in $OUT) =="
if [ -s "$OUT/bench_gpu.json" ]; then
  "$PY" benchmarks/run.py --table "$OUT/bench_gpu.json"
else
  echo "no results written: see $OUT/bench_gpu.log"
fi
exit $rc
