#!/usr/bin/env bash
# The check of the GPU paths on a machine with an NVIDIA GPU: export the shipped model in fp32,
# fp16 and bf16 (with the TensorRT lint), build engines, compare TensorRT and ONNX Runtime CUDA with
# ONNX Runtime CPU, check that neither moves its KV cache across the bus per call, run the `gpu`
# tests, and time TensorRT against PyTorch (on the same GPU when torch has CUDA).
#
#   bash scripts/gpu-check.sh          # OUT=out/gpu-check CKPT=models/words/checkpoint.pt PYTHON=python3
#
# It installs nothing (the machine may reach no package index) and uses what is installed; install
# first with `pip install torch==2.13.0 && pip install -e '.[train,gpu,dev]'` (README, "GPU install").
# Every step runs, whatever failed before, and prints one verdict line:
#   <step>: ok (...) | <step>: FAILED: <error> | <step>: skipped: <reason>
# Models, engines and logs stay in a temporary folder that is removed at the end; OUT receives only
# machine.txt, verdicts.txt, parity.jsonl, traffic.jsonl, bench.jsonl and failures.txt (the tail of
# each failed log).
# The whole run keeps within BUDGET seconds (default 290): a step that would start past it is skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu-check}
CKPT=${CKPT:-models/words/checkpoint.pt}
PYTHON=${PYTHON:-python3}
BUDGET=${BUDGET:-290}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
rm -f "$OUT"/{machine.txt,verdicts.txt,parity.jsonl,traffic.jsonl,bench.jsonl,failures.txt}
FAILED=0

verdict() { echo "$1" | tee -a "$OUT/verdicts.txt"; }
skip() { verdict "$1: skipped: $2"; }

# step NAME LIMIT COMMAND...: run COMMAND with at most LIMIT seconds (less when the budget is nearly spent);
# the verdict carries the command's last output line, so a script can phrase its own
step() {
  local name=$1 limit=$2 left=$((BUDGET - SECONDS)) rc
  shift 2
  if [ "$left" -lt 15 ]; then skip "$name" "the ${BUDGET}s budget is spent"; return 1; fi
  [ "$limit" -gt "$left" ] && limit=$left
  timeout "$limit" "$@" >"$WORK/$name.log" 2>&1
  rc=$?
  local last
  last=$(grep -v '^\s*$' "$WORK/$name.log" | tail -n 1)
  if [ "$rc" -eq 0 ]; then
    verdict "$name: ok${last:+ ($last)}"
    return 0
  fi
  FAILED=1
  [ "$rc" -eq 124 ] && last="timed out after ${limit}s"
  verdict "$name: FAILED: ${last:-exit code $rc}"
  { echo "== $name (exit $rc)"; tail -n 20 "$WORK/$name.log"; } >>"$OUT/failures.txt"
  return 1
}

# --- what is installed: one line per prerequisite, then each step checks the ones it needs
if ! "$PYTHON" -c "import dnd_sdk" 2>/dev/null; then
  skip "all steps" "dnd-sdk is not importable by $PYTHON; install it first (pip install -e '.[train,gpu,dev]')"
  exit 1
fi
"$PYTHON" - >"$WORK/have.sh" 2>/dev/null <<'EOF'
import importlib


def tensorrt():  # importable, and a major version dnd-build follows
    from dnd_sdk.engine_index import tensorrt_major
    return tensorrt_major(importlib.import_module("tensorrt").__version__)


def nvrtc():  # libnvrtc loads (the first call loads it): the device cache compiles its kernel with it
    bindings = importlib.import_module("cuda.bindings.nvrtc")
    return bindings.nvrtcVersion()[0] == bindings.nvrtcResult.NVRTC_SUCCESS


CHECKS = {
    "TRT": tensorrt,
    "CUDA_PYTHON": lambda: importlib.import_module("cuda.bindings.runtime"),
    "NVRTC": nvrtc,
    "EXPORT": lambda: importlib.import_module("dnd_export"),  # torch and onnx come with it
    "ORT": lambda: importlib.import_module("onnxruntime"),
    "ORT_CUDA": lambda: "CUDAExecutionProvider" in importlib.import_module("onnxruntime").get_available_providers(),
    "TORCH_CUDA": lambda: importlib.import_module("torch").cuda.is_available(),
    "PYTEST": lambda: importlib.import_module("pytest"),
}
for name, probe in CHECKS.items():
    try:
        ok = bool(probe())
    except Exception:  # not installed, or installed but unusable: either way absent here
        ok = False
    print(f"HAVE_{name}={int(ok)}")
EOF
# shellcheck disable=SC1091
source "$WORK/have.sh"
HAVE_GPU=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then HAVE_GPU=1; fi
missing=()
[ "$HAVE_GPU" = 1 ] || missing+=("an NVIDIA GPU with its driver (nvidia-smi finds none)")
[ "$HAVE_TRT" = 1 ] || missing+=("TensorRT 10 or 11 (python module tensorrt)")
[ "$HAVE_CUDA_PYTHON" = 1 ] || missing+=("cuda-python >= 12.6.1 (cuda.bindings)")
[ "$HAVE_NVRTC" = 1 ] || missing+=("NVRTC (nvidia-cuda-nvrtc, for the KV cache kernel of both GPU backends)")
[ "$HAVE_EXPORT" = 1 ] || missing+=("torch and onnx for dnd-export (the train extra)")
[ "$HAVE_ORT" = 1 ] || missing+=("onnxruntime or onnxruntime-gpu")
[ "$HAVE_ORT_CUDA" = 1 ] || missing+=("ONNX Runtime's CUDA provider (onnxruntime-gpu)")
[ "$HAVE_TORCH_CUDA" = 1 ] || missing+=("torch with CUDA (the speed figure then compares with PyTorch on the CPU)")
[ "$HAVE_PYTEST" = 1 ] || missing+=("pytest (the dev extra)")
if [ ${#missing[@]} -eq 0 ]; then verdict "prerequisites: ok"; else
  verdict "prerequisites: missing $(printf '%s; ' "${missing[@]}" | sed 's/; $//')"; fi

{
  [ "$HAVE_GPU" = 1 ] && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PYTHON" -c "import platform, importlib.metadata as m
for d in ('dnd-sdk', 'tensorrt', 'tensorrt-cu12', 'cuda-python', 'nvidia-cuda-nvrtc', 'nvidia-cuda-nvrtc-cu12', 'onnxruntime', 'onnxruntime-gpu', 'torch', 'onnx'):
    try: print(d, m.version(d))
    except m.PackageNotFoundError: print(d, 'not installed')
print('python', platform.python_version())"
} >"$OUT/machine.txt" 2>&1
[ "$HAVE_GPU" = 1 ] || sed -i '1i no NVIDIA GPU' "$OUT/machine.txt"
verdict "machine: $(paste -sd ';' "$OUT/machine.txt" | sed 's/;/; /g')"

# --- export: fp32 and fp16 with --check (TensorRT lint, then ONNX Runtime against PyTorch); bf16 has
# no ONNX Runtime CPU kernels, so its check is the lint alone
for dtype in fp32 fp16 bf16; do
  if [ "$HAVE_EXPORT" != 1 ]; then skip "export-$dtype" "torch and onnx are not installed (the train extra)"; continue; fi
  if [ ! -f "$CKPT" ]; then skip "export-$dtype" "no checkpoint at $CKPT"; continue; fi
  if [ "$dtype" = bf16 ]; then
    step export-bf16 90 dnd-export "$CKPT" -o "$WORK/model-bf16" --dtype bf16 &&
      step lint-bf16 30 "$PYTHON" -m dnd_export.trt_lint "$WORK/model-bf16"
  else
    step "export-$dtype" 90 dnd-export "$CKPT" -o "$WORK/model-$dtype" --dtype "$dtype" --check
  fi
done

# --- an int8 export runs on ONNX Runtime only (forms): dnd-build must refuse it before building
if [ "$HAVE_EXPORT" != 1 ] || [ ! -f "$CKPT" ]; then skip build-int8-refused "no int8 export can be made here"
elif step export-int8 90 dnd-export "$CKPT" -o "$WORK/model-int8" --dtype int8; then
  step build-int8-refused 30 bash -c "dnd-build '$WORK/model-int8' -o '$WORK/engines-int8' 2>&1 | tee /dev/stderr |
    grep -q 'holds graphs for onnxruntime-cuda, onnxruntime-cpu only' && [ ! -e '$WORK/engines-int8' ] && echo 'refused, nothing written'"
fi

# --- engines
for dtype in fp32 fp16 bf16; do
  if [ "$HAVE_TRT" != 1 ]; then skip "build-$dtype" "TensorRT 10 or 11 is not installed"; continue; fi
  if [ "$HAVE_GPU" != 1 ]; then skip "build-$dtype" "no NVIDIA GPU"; continue; fi
  if [ ! -f "$WORK/model-$dtype/manifest.json" ]; then skip "build-$dtype" "no $dtype export (export-$dtype did not pass)"; continue; fi
  step "build-$dtype" 120 dnd-build "$WORK/model-$dtype" -o "$WORK/engines-$dtype" --max-batch 16 \
    --timing-cache "$WORK/timing.cache" --workspace-gib 4
done

# --- parity with ONNX Runtime CPU (bf16 against the fp32 export)
parity() {  # step name, reference folder, candidate folder, backend, dtype
  if [ "$HAVE_ORT" != 1 ]; then skip "$1" "onnxruntime is not installed"; return; fi
  if [ ! -f "$2/manifest.json" ]; then skip "$1" "no reference export ($(basename "$2"))"; return; fi
  if [ ! -f "$3/manifest.json" ]; then skip "$1" "no $(basename "$3") folder (its build or export did not pass)"; return; fi
  step "$1" 90 "$PYTHON" scripts/gpu_parity.py "$2" "$3" "$4" "$5" --json "$OUT/parity.jsonl"
}
parity parity-tensorrt-fp32 "$WORK/model-fp32" "$WORK/engines-fp32" tensorrt fp32
parity parity-tensorrt-fp16 "$WORK/model-fp16" "$WORK/engines-fp16" tensorrt fp16
parity parity-tensorrt-bf16 "$WORK/model-fp32" "$WORK/engines-bf16" tensorrt bf16
if [ "$HAVE_ORT_CUDA" = 1 ]; then
  parity parity-onnxruntime-cuda-fp32 "$WORK/model-fp32" "$WORK/model-fp32" onnxruntime-cuda fp32
else skip parity-onnxruntime-cuda-fp32 "ONNX Runtime has no CUDA provider here (onnxruntime-gpu)"; fi

# --- the KV cache stays on the device: stage 0 at 1 and at 64 rows (the engines' most, for TensorRT),
# rows at different positions, against one host-to-device copy of its cache; and the bytes each call copied
traffic() {  # step name, model folder, backend
  if [ "$HAVE_GPU" != 1 ] || [ "$HAVE_CUDA_PYTHON" != 1 ]; then skip "$1" "it needs a GPU and cuda-python"; return; fi
  if [ ! -f "$2/manifest.json" ]; then skip "$1" "no $(basename "$2") folder (its build or export did not pass)"; return; fi
  step "$1" 45 "$PYTHON" scripts/gpu_cache_traffic.py "$2" "$3" --json "$OUT/traffic.jsonl"
}
traffic traffic-tensorrt-fp16 "$WORK/engines-fp16" tensorrt
if [ "$HAVE_ORT_CUDA" = 1 ]; then traffic traffic-onnxruntime-cuda-fp32 "$WORK/model-fp32" onnxruntime-cuda
else skip traffic-onnxruntime-cuda-fp32 "ONNX Runtime has no CUDA provider here (onnxruntime-gpu)"; fi

# --- the tests marked gpu: the cache kernel against its numpy reference (a GPU and cuda-python suffice),
# the TensorRT and ONNX Runtime CUDA backends against ONNX Runtime CPU with rows of one call at different
# positions, and _build_engine, on tiny models; each skips, saying why, without what it needs
if [ "$HAVE_PYTEST" != 1 ]; then skip gpu-tests "pytest is not installed (the dev extra)"
elif [ "$HAVE_GPU" != 1 ] || [ "$HAVE_CUDA_PYTHON" != 1 ]; then
  skip gpu-tests "they need a GPU and cuda-python (and TensorRT or onnxruntime-gpu for the backends)"
else step gpu-tests 120 "$PYTHON" -m pytest tests -m gpu -q -rs -p no:cacheprovider; fi

# --- speed: images/s of the runtime against the PyTorch reference sampler in the same run
REF_DEVICE=cpu
[ "$HAVE_TORCH_CUDA" = 1 ] && REF_DEVICE=cuda
bench() {  # step name, model folder, backend
  if [ "$HAVE_EXPORT" != 1 ]; then skip "$1" "torch is not installed (the reference sampler is PyTorch)"; return; fi
  if [ ! -f "$2/manifest.json" ]; then skip "$1" "no $(basename "$2") folder (its build or export did not pass)"; return; fi
  step "$1" 60 "$PYTHON" scripts/gpu_bench.py "$CKPT" "$2" "$3" "$REF_DEVICE" --json "$OUT/bench.jsonl"
}
for dtype in fp16 fp32 bf16; do
  if [ "$HAVE_TRT" = 1 ] && [ "$HAVE_GPU" = 1 ]; then bench "bench-tensorrt-$dtype" "$WORK/engines-$dtype" tensorrt
  else skip "bench-tensorrt-$dtype" "no TensorRT engines can be built here (no GPU or no TensorRT)"; fi
done
if [ "$HAVE_ORT_CUDA" = 1 ]; then bench bench-onnxruntime-cuda-fp32 "$WORK/model-fp32" onnxruntime-cuda
else skip bench-onnxruntime-cuda-fp32 "ONNX Runtime has no CUDA provider here (onnxruntime-gpu)"; fi

ok=$(grep -c ': ok' "$OUT/verdicts.txt"); failed=$(grep -c ': FAILED' "$OUT/verdicts.txt")
skipped=$(grep -c ': skipped' "$OUT/verdicts.txt")
echo "gpu-check: $ok ok, $failed failed, $skipped skipped in ${SECONDS}s; results in $OUT"
exit $FAILED
