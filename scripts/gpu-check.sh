#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and TensorRT 10+: export the shipped model (fp32, fp16),
# build TensorRT engines, check their parity with ONNX Runtime CPU, and benchmark TensorRT
# and ONNX Runtime CUDA against the PyTorch reference. A few minutes; results in $OUT.
#
#   pip install torch==2.13.0 && pip install -e '.[train,gpu]'
#   pip uninstall -y onnxruntime && pip install --force-reinstall --no-deps onnxruntime-gpu  # the two collide
#   bash scripts/gpu-check.sh                 # OUT=out/gpu-check CKPT=models/words/checkpoint.pt
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu-check}
CKPT=${CKPT:-models/words/checkpoint.pt}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
"$PYTHON" -c "import tensorrt, onnxruntime as ort; print('tensorrt', tensorrt.__version__, '| onnxruntime',
ort.__version__, ort.get_available_providers())" | tee -a "$OUT/machine.txt"

for dtype in fp32 fp16; do
  dnd-export "$CKPT" -o "$OUT/model-$dtype" --dtype "$dtype" --force
  dnd-build "$OUT/model-$dtype" -o "$OUT/engines-$dtype" --max-batch 16 --timing-cache "$OUT/timing.cache" --force
done

parity=0
"$PYTHON" scripts/gpu_parity.py "$OUT" | tee "$OUT/parity.txt" || parity=1   # benchmark even if it fails

bench() {  # name, model folder, backend
  dnd bench --checkpoint "$CKPT" --model "$2" --backend "$3" --batch 1 --batch 16 --num-batches 2 --repeats 2 \
    -o "$OUT/bench-$1.json" >/dev/null || { echo "$1: not benchmarked (backend unavailable?)"; return; }
  "$PYTHON" -c "import json; r = json.load(open('$OUT/bench-$1.json'))
for row in r['results']: print('$1', 'batch', row['batch_size'], row['runtime_images_per_s'], 'images/s,',
      row['ratio'], 'x the PyTorch reference')"
}
bench tensorrt-fp16 "$OUT/engines-fp16" tensorrt
bench tensorrt-fp32 "$OUT/engines-fp32" tensorrt
bench ort-cuda-fp32 "$OUT/model-fp32" onnxruntime-cuda
bench ort-cpu-fp32 "$OUT/model-fp32" onnxruntime-cpu
exit $parity
