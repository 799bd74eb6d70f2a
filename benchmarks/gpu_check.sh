#!/usr/bin/env bash
# One GPU check, under 8 minutes on one GPU: the step benchmarks at paper sizes in float32 and
# bfloat16 (2D U-Net mean teacher 256x256, 12 + 12 images; 3D V-Net + ResNet-34 dual-stream
# 112x112x80, 2 + 2 volumes) with XLA's compiled memory, a short mean-teacher training run at the
# paper profile (steps/s with the real data pipeline) and the pipeline's own rate.
#
#   benchmarks/gpu_check.sh              # on a GPU machine, from a checkout
#   benchmarks/gpu_check.sh --cpu-small  # the same stages at small sizes on a CPU (or
#                                        # GPU_CHECK_CPU_SMALL=1): checks the script itself
#
# Python: the checkout's .venv when it has jaxseg's dependencies, else a python3 that has them
# (the checkout goes on PYTHONPATH), else a new .venv with `pip install -e ".[cuda12]"`.
# Training reads the synthetic phantom at paper size (no dataset travels with a checkout).
# Everything goes to $OUT when set, else benchmarks/results/gpu_check-<UTC time>/: log.txt (all
# output), one JSON per stage, summary.md. A stage that fails or passes its time limit is
# reported and the next one runs; the exit status is 1 if any stage failed.

set -uo pipefail
cd "$(dirname "$0")/.."

mode=gpu
if [[ "${1:-}" == "--cpu-small" || "${GPU_CHECK_CPU_SMALL:-0}" == "1" ]]; then
  mode=cpu-small
elif [[ $# -gt 0 ]]; then
  echo "usage: benchmarks/gpu_check.sh [--cpu-small]" >&2
  exit 2
fi

out="${OUT:-benchmarks/results/gpu_check-$(date -u +%Y%m%dT%H%M%S)}"
mkdir -p "$out"
log="$out/log.txt"
exec > >(tee -a "$log") 2>&1
export PYTHONUNBUFFERED=1
# Compiled programs are shared between the stages (train_rate reuses step_time's).
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/jaxseg-gpu-check-cache}"

# ---- Python with jaxseg's dependencies.
deps='import jax, flax, optax, grain, orbax.checkpoint, ml_collections, nibabel, h5py, scipy'
if [[ -x .venv/bin/python ]] && .venv/bin/python -c "$deps" 2>/dev/null; then
  py=.venv/bin/python
elif python3 -c "$deps" 2>/dev/null; then
  py=python3
else
  echo "== setting up .venv: pip install -e \".[cuda12]\""
  python3 -m venv --system-site-packages .venv && .venv/bin/pip install -q -e ".[cuda12]" || {
    echo "error: could not install jaxseg's dependencies into .venv (no network? carry wheels)"
    exit 2
  }
  py=.venv/bin/python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
backend=$("$py" -c 'import jax; print(jax.default_backend())') || exit 2
echo "== python $py, jax backend $backend, mode $mode, output $out"
if [[ "$mode" == gpu && "$backend" != gpu ]]; then
  echo "error: JAX sees no GPU (backend $backend); on a CPU use --cpu-small"
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader

# ---- Sizes. The 2D steps run the paper config; cpu-small shrinks images, batches and widths.
if [[ "$mode" == gpu ]]; then
  step2d=(--size 256 --labeled 12 --unlabeled 12 --repeats 20 --warmup 3)
  step3d=(--crop 112,112,80 --labeled 2 --unlabeled 2 --repeats 10 --warmup 2)
  train=(--steps 100 --pipeline-batches 30)
  pipe=(--batches 30)
  limit=150  # seconds per stage at most
  budget=450  # seconds for the whole script: stages get what is left of it (8 minutes in all)
else
  step2d=(--size 32 --labeled 2 --unlabeled 2 --repeats 2 --warmup 1)
  step3d=(--crop 16,16,16 --labeled 2 --unlabeled 2 --base-filters 4 --repeats 1 --warmup 1)
  train=(--size 32 --batch 2,2 --steps 3 --pipeline-batches 5 --set 'model.channels=(4,8,16,32,64)')
  pipe=(--batches 5 --image-size 32 --crop 16,16,16 --phantom-3d 32)
  limit=600
  budget=3600
fi

failed=()
stage() {  # stage NAME COMMAND...: runs COMMAND under the time limit, records a failure
  local name=$1
  shift
  echo
  local left=$((budget - SECONDS))
  if ((left < 30)); then
    echo "== $name: skipped, the script's $budget s are spent"
    failed+=("$name (no time left)")
    return
  fi
  echo "== $name: $*"
  local start=$SECONDS
  timeout "$((left < limit ? left : limit))" "$@"
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s"
  [[ $rc == 0 ]] || failed+=("$name (exit $rc)")
}

stage step2d_float32 "$py" benchmarks/step_time.py "${step2d[@]}" --steps mean_teacher \
  --json "$out/step2d_float32.json"
stage step2d_bfloat16 "$py" benchmarks/step_time.py "${step2d[@]}" --steps mean_teacher \
  --set model.dtype=bfloat16 --json "$out/step2d_bfloat16.json"
stage step3d_float32 "$py" benchmarks/step_time_3d.py "${step3d[@]}" \
  --json "$out/step3d_float32.json"
stage step3d_bfloat16 "$py" benchmarks/step_time_3d.py "${step3d[@]}" \
  --set model.dtype=bfloat16 --json "$out/step3d_bfloat16.json"
stage train_meanteacher "$py" benchmarks/train_rate.py --experiment acdc_meanteacher "${train[@]}" \
  --json "$out/train_meanteacher.json"
stage pipeline "$py" benchmarks/pipeline_rate.py "${pipe[@]}" \
  --experiments acdc_meanteacher,acdc_plgcl,la_meanteacher,la_dualstream \
  --json "$out/pipeline.json"

# ---- Summary: one line per stage from its JSON.
"$py" - "$out" <<'EOF' | tee "$out/summary.md"
import json, os, sys
out = sys.argv[1]
def load(name):
  path = os.path.join(out, name + '.json')
  return json.load(open(path)) if os.path.exists(path) else None
mib = lambda x: '-' if x is None else f'{x / 2**20:.0f}'
print('| stage | median step ms | steps/s | temp MiB | args MiB |')
print('|---|---:|---:|---:|---:|')
for dtype in ('float32', 'bfloat16'):
  r = load(f'step2d_{dtype}')
  if r:
    s = r['results'][0]
    print(f"| 2D mean teacher {s['size']}, {s['labeled']}+{s['unlabeled']}, {dtype} | "
          f"{s['median_ms']:.1f} | {s['steps_per_s']:.2f} | {mib(s['temp_size_in_bytes'])} | "
          f"{mib(s['argument_size_in_bytes'])} |")
  r = load(f'step3d_{dtype}')
  if r and r['median_s']:
    print(f"| 3D dual-stream {'x'.join(map(str, r['crop']))}, {r['labeled']}+{r['unlabeled']}, "
          f"{dtype} | {1e3 * r['median_s']:.1f} | {1 / r['median_s']:.2f} | "
          f"{mib(r['temp_size_in_bytes'])} | {mib(r['argument_size_in_bytes'])} |")
r = load('train_meanteacher')
if r:
  print(f"\ntraining ({r['experiment']}, {r['data']} {'x'.join(map(str, r['shape']))}): "
        f"{r['steps_per_s']:.2f} steps/s, {100 * r['data_wait_fraction']:.0f}% waiting for data; "
        f"pipeline alone {r['pipeline_batches_per_s']:.2f} batches/s "
        f"({r['pipeline_over_step']:.1f}x the step rate)")
r = load('pipeline')
if r:
  print('\n| experiment | pipeline batches/s | read_threads |')
  print('|---|---:|---:|')
  for p in r['results']:
    print(f"| {p['experiment']} | {p['batches_per_s']:.1f} | {p['read_threads']} |")
EOF

echo
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "== FAILED: ${failed[*]}"
  exit 1
fi
echo "== all stages passed; results in $out"
