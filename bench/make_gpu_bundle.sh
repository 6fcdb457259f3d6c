#!/usr/bin/env bash
# Rebuild the bundle that bench/gpu_check.sh installs on the GPU machine, in OUT (default: <repo>/.whl,
# git-ignored). That machine (Python 3.12, torch 2.11+cu130, transformers 5.17, peft; see
# /work/.library/device/KINDS.md) has no Ray, no DeepSpeed and no network, and a call may carry 64 MiB
# with the checkout. The bundle holds exactly what is missing there, pinned:
#   ray-2.60.0-cp312-slim.tar.xz   Ray 2.60's cp312 wheel unpacked without ray/jars (Java) and ray/rllib,
#                                  re-packed with xz (79 MB wheel -> ~31 MB); extracted into the site dir
#   deepspeed-0.19.8-*.whl         built here from its sdist (ops are JIT-built on use; nvcc is there)
#   *.whl                          Ray's / DeepSpeed's dependencies absent from that image
#   assets/tokenizer, assets/data  SmolLM2's tokenizer files (no weights) and HH-RLHF harmless (MIT) for the tests
# Usage: bench/make_gpu_bundle.sh [OUT]      (needs network to PyPI; ~2 min)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "${1:-$REPO/.whl}" && cd "${1:-$REPO/.whl}" && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PY" ] || PY=/work/main/.venv/bin/python
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# Missing on the image (KINDS.md's package list), resolved for cp312 against ray[train,data]==2.60.0 + deepspeed.
DEPS="pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
      hjson==3.1.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
      tensorboardX==2.6.5"
download() {
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$@"
}
rm -rf "$OUT"/*.whl "$OUT"/*.tar.xz "$OUT"/assets
download "$TMP/ray" ray==2.60.0
mkdir "$TMP/ray/tree"
(cd "$TMP/ray/tree" && unzip -q ../ray-2.60.0-*.whl && rm -rf ray/jars ray/rllib)
tar -C "$TMP/ray/tree" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - . \
  | xz -6 -T1 > "$OUT/ray-2.60.0-cp312-slim.tar.xz"
# shellcheck disable=SC2086
download "$OUT" $DEPS
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation deepspeed==0.19.8 -w "$OUT"
mkdir -p "$OUT/assets/tokenizer" "$OUT/assets/data"
"$PY" - "$OUT/assets/tokenizer" <<'PYEOF'
import sys
from transformers import AutoTokenizer
from ray_rm.assets import resolve_model_path
AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m-instruct")).save_pretrained(sys.argv[1])
PYEOF
cp -r "$REPO/../shared/data/hh-rlhf-harmless" "$OUT/assets/data/" 2>/dev/null \
  || cp -r /work/shared/data/hh-rlhf-harmless "$OUT/assets/data/"
(cd "$OUT" && sha256sum ./*.whl ./*.tar.xz > SHA256SUMS)
du -sh "$OUT"; ls -la "$OUT"
