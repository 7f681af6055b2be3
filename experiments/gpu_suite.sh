#!/usr/bin/env bash
# One prepared GPU run: pytest -m gpu, train_throughput, solver_overhead, a short CLI
# training run on digits with its bits/dim. Each step has its own time budget and the suite continues past
# a failed step. Everything lands in $OUT (default ./gpu_out): summary.md, suite.log, raw.tar.gz.
#   bash experiments/gpu_suite.sh              # on the H200 (≤ 8 min)
#   bash experiments/gpu_suite.sh --dry-run    # tiny, on CPU (also: --cpu-dry-run or GPU_SUITE_DEVICE=cpu)
set -u
cd "$(dirname "$0")/.." || exit 1
DEV=${GPU_SUITE_DEVICE:-cuda}
for a in "$@"; do case $a in --dry-run|--cpu-dry-run) DEV=cpu ;; *) echo "unknown option $a"; exit 2 ;; esac; done
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT/raw"
OUT=$(cd "$OUT" && pwd)
RAW=$OUT/raw
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
# torchsde (and its dependency trampoline) are not on the device image: carry them as wheels in .whl/
if ! $PY -c 'import torchsde' 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH="$PYTHONPATH:/tmp/site"
  else
    echo "torchsde missing and no .whl/ wheels carried" >&2
  fi
fi
RESULTS=()
step() {  # step NAME BUDGET_S COMMAND...
  local name=$1 budget=$2; shift 2
  local t0=$SECONDS rc
  echo "== $name (budget ${budget}s): $*" | tee -a "$OUT/suite.log"
  timeout --kill-after=10 "$budget" "$@" >"$RAW/$name.log" 2>&1; rc=$?
  tail -n 40 "$RAW/$name.log" >>"$OUT/suite.log"
  local verdict=pass; [ $rc -eq 0 ] || verdict="FAIL (rc $rc$([ $rc -eq 124 ] && echo ', timed out'))"
  RESULTS+=("| $name | $verdict | $((SECONDS - t0)) | $budget |")
  echo "== $name: $verdict in $((SECONDS - t0))s" | tee -a "$OUT/suite.log"
}
if [ "$DEV" = cpu ]; then
  TP=(--device cpu --quick --steps 2 --warmup 1 --repeats 1)
  SO=(--device cpu --batch 256 --steps 5 --repeats 1 --solvers euler,ddim)
  TRAIN_STEPS=3; LL=(--n 8 --rtol 1e-2 --atol 1e-2); DL=(--steps 3 --batch 2 --repeats 1)
  PYTEST=(-m gpu -q -x --co)
  B=(60 60 60 60 60 60)
else
  TP=(--device cuda --batches 128,512 --variants "fp32 fast,bf16,bf16+compile,bf16+graph" --warmup 5 --steps 20 --repeats 2)
  SO=(--device cuda --repeats 3)
  $PY -c 'import diffusers' 2>/dev/null && SO+=(--anchors)
  TRAIN_STEPS=1500; LL=(--n 200 --rtol 1e-4 --atol 1e-4); DL=(--steps 20 --batch 64 --repeats 5)
  PYTEST=(-m gpu -q -rfEs -o faulthandler_timeout=60)
  $PY -c 'import pytest_timeout' 2>/dev/null && PYTEST+=(--timeout 60)
  B=(120 50 150 50 45 20)  # pytest, digits, unet33m, overhead, train/likelihood each, env: 480 s in all
fi
step env "${B[5]}" bash -c "nvidia-smi || true; $PY -c 'import torch,sys; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else \"no cuda\")'"
step pytest_gpu "${B[0]}" $PY -m pytest "${PYTEST[@]}"
rm -f results/train_throughput.*
step throughput_digits "${B[1]}" $PY experiments/train_throughput.py "${TP[@]}" --models digits
cp results/train_throughput.* "$RAW/" 2>/dev/null && for f in "$RAW"/train_throughput.*; do mv "$f" "${f/train_throughput./train_throughput_digits.}"; done
if [ "$DEV" != cpu ]; then
  rm -f results/train_throughput.*
  step throughput_unet33m "${B[2]}" $PY experiments/train_throughput.py "${TP[@]}" --models unet33m
  cp results/train_throughput.* "$RAW/" 2>/dev/null
fi
step solver_overhead "${B[3]}" $PY experiments/solver_overhead.py "${SO[@]}"
cp results/solver_overhead_"$DEV".md "$RAW/" 2>/dev/null
if $PY -c 'import diffusers' 2>/dev/null; then  # our loop against diffusers' on one UNet (docs/results.md)
  step diffusers_loop "${B[5]}" $PY experiments/diffusers_loop.py --device "$DEV" "${DL[@]}"
  cp results/diffusers_loop.md "$RAW/" 2>/dev/null
fi
step cli_train "${B[4]}" $PY -m scoresde.cli train --config configs/digits_vp.toml --device "$DEV" --steps "$TRAIN_STEPS" --out "$RAW/digits_run" --no-preview --quiet
step cli_likelihood "${B[4]}" $PY -m scoresde.cli likelihood --checkpoint "$RAW/digits_run/checkpoint.pt" --device "$DEV" --method hutchinson "${LL[@]}" --out "$RAW/likelihood.json" --quiet
{
  echo "# GPU suite ($DEV) $(date -u)"; echo
  grep -E "^torch|^3\." "$RAW/env.log"; echo
  echo "| step | result | seconds | budget |"; echo "|---|---|---|---|"
  printf '%s\n' "${RESULTS[@]}"; echo
  for f in "$RAW"/*.md; do [ -f "$f" ] && { echo "## $(basename "$f")"; echo; cat "$f"; echo; }; done
  echo "## likelihood"; echo; grep -E "bits/dim|nfe" "$RAW/cli_likelihood.log"; echo
  echo "## pytest -m gpu (tail)"; echo; echo '```'; tail -n 30 "$RAW/pytest_gpu.log"; echo '```'
} >"$OUT/summary.md"
tar -czf "$OUT/raw.tar.gz" -C "$OUT" raw && [ -n "${GPU_SUITE_KEEP_RAW:-}" ] || rm -rf "$RAW"
echo "wrote $OUT/summary.md"
