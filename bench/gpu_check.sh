#!/usr/bin/env bash
# The GPU check, one command on a GPU machine:   bench/gpu_check.sh RESULTS_DIR
#   1. installs the carried bundle (.whl/, built by bench/make_gpu_bundle.sh) into a site dir   (<= 60 s)
#   2. pytest -m gpu (tests/test_gpu.py: kernels, NCCL DeepSpeed run, export, serve, relabel)   (<= 210 s)
#   3. bench/gpu_bench.py: training tokens/s + MFU, serving batching gain                        (<= 210 s)
# Everything lands in RESULTS_DIR (at most 8 files): env.json, gpu_tests.log, gpu_tests.xml,
# gpu_bench.json, gpu_bench.png, gpu_bench.log, gpu_check.log. Ends within 8 minutes; each section has
# its own time limit, and a failing section does not stop the next one. Exit code: 0 only if all passed.
set -uo pipefail
RESULTS=${1:?usage: bench/gpu_check.sh RESULTS_DIR}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
exec > >(tee "$RESULTS/gpu_check.log") 2>&1
PY=${PYTHON:-python3}
START=$(date +%s)
step() { echo "[gpu_check] $(( $(date +%s) - START ))s: $*"; }

# ---- 1. the carried bundle: Ray (slim tarball), DeepSpeed and the missing dependencies
SITE=${RAY_RM_SITE:-/tmp/ray_rm_site}
if [ -d "$REPO/.whl" ]; then
  step "installing the bundle into $SITE"
  mkdir -p "$SITE"
  for t in "$REPO"/.whl/*.tar.xz; do tar -xJf "$t" -C "$SITE" || exit 3; done
  timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$REPO"/.whl/*.whl || exit 3
  export RAY_RM_TEST_TOKENIZER="$REPO/.whl/assets/tokenizer" RAY_RM_TEST_DATA="$REPO/.whl/assets/data"
fi
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export RAY_AUTH_MODE=disabled TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
"$PY" - "$RESULTS/env.json" <<'EOF'
import json, platform, shutil, subprocess, sys
import torch
out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
for name in ("transformers", "peft", "ray", "deepspeed", "pydantic", "flash_attn", "bitsandbytes"):
    try:
        out[name] = __import__(name).__version__
    except Exception as exc:
        out[name] = f"unavailable: {type(exc).__name__}: {exc}"[:200]
from ray_rm.model.attention import REGISTRY
out["attention"] = {n: REGISTRY[n].refusal("cuda", torch.bfloat16, set()) or "ok" for n in REGISTRY}
if shutil.which("nvidia-smi"):
    out["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,clocks.max.sm,power.limit",
                                        "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
with open(sys.argv[1], "w") as fh:
    json.dump(out, fh, indent=2)
EOF
cat "$RESULTS/env.json"

# ---- 2. the GPU test suite
step "pytest -m gpu"
timeout 210 "$PY" -m pytest -m gpu -v -rs -p no:cacheprovider --junitxml="$RESULTS/gpu_tests.xml" \
  "$REPO/tests/test_gpu.py" > "$RESULTS/gpu_tests.log" 2>&1
TESTS=$?
tail -n 25 "$RESULTS/gpu_tests.log"

# ---- 3. the GPU bench (its sections stop on their own time budgets; the timeout is a backstop)
step "bench/gpu_bench.py"
# GPU_CHECK_SMOKE=1: the bench at its tiny CPU size (to try this script on a machine without a GPU)
timeout 210 "$PY" "$REPO/bench/gpu_bench.py" --results-dir "$RESULTS" --variant-budget-s 18 --serve-budget-s 8 \
  ${GPU_CHECK_SMOKE:+--cpu-smoke} > "$RESULTS/gpu_bench.log" 2>&1
BENCH=$?
grep -E "^\[gpu_bench\]" "$RESULTS/gpu_bench.log" | cut -c1-400
[ $BENCH -ne 0 ] && tail -n 30 "$RESULTS/gpu_bench.log"
step "done: tests rc=$TESTS, bench rc=$BENCH"
[ $TESTS -eq 0 ] && [ $BENCH -eq 0 ]
