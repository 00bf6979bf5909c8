"""Whether a GPU backend's stage call moves the KV cache across the bus (run by gpu-check.sh).

    python scripts/gpu_cache_traffic.py MODEL_DIR BACKEND [--json FILE]
    python scripts/gpu_cache_traffic.py out/engines-fp16 tensorrt

Times stage 0 at 1 row and at many (64, or the engines' most rows), rows at different positions,
and one host-to-device copy of stage 0's cache for the many rows: what a backend that copied its
cache per call would move on every call. The cache stays on the device when the many-row call
costs less than half that copy more than the one-row call. Also checks the bytes the backend
itself copied per call against the step's inputs and outputs. Prints one verdict line, appends
the numbers to FILE as a JSON line, and exits 1 when a check fails.
"""
import argparse
import json
import sys
import time

import numpy as np

from dnd_sdk import Generator
from dnd_sdk.backends.device_cache import CacheLayout
from dnd_sdk.errors import DndError

MOST_ROWS, REPEATS = 64, 30


def call_seconds(backend, hidden: np.ndarray) -> tuple:
    """(median seconds of a stage-0 call of these rows, bytes the backend copied (to device, to host) per call)."""
    rows = len(hidden)
    backend.reset(rows)
    positions = np.arange(rows) % backend.manifest.cache_length  # every row at its own position
    times = []
    for i in range(REPEATS + 3):  # 3 warm-up calls
        cache = backend.cache
        moved = (cache.bytes_to_device, cache.bytes_to_host)
        start = time.perf_counter()
        backend.stage_step(0, hidden, positions)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return float(np.median(times)), (cache.bytes_to_device - moved[0], cache.bytes_to_host - moved[1])


def cache_copy_seconds(nbytes: int) -> float:
    """Median seconds of one cudaMemcpy of `nbytes` from (pageable) numpy memory to the device."""
    from dnd_sdk.backends.cuda_runtime import CudaRuntime
    cuda = CudaRuntime()
    stream, host = cuda.create_stream(), np.ones(nbytes, np.uint8)
    ptr = cuda.malloc(nbytes)
    try:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            cuda.copy_to_device(ptr, host.ctypes.data, nbytes, stream)
            cuda.synchronize(stream)
            times.append(time.perf_counter() - start)
    finally:
        cuda.free(ptr)
        cuda.destroy_stream(stream)
    return float(np.median(times))


def measure(gen: Generator) -> dict:
    backend = gen.backend
    rows = min(MOST_ROWS, backend.max_batch or MOST_ROWS)
    hidden = np.ascontiguousarray(gen.cls_embedding[np.arange(rows) % gen.num_classes][:, None, :], np.float32)
    one, one_moved = call_seconds(backend, hidden[:1])
    many, many_moved = call_seconds(backend, hidden)
    layout = CacheLayout.of(backend.manifest, rows)
    stage0_cache = sum(rows * t.kv_heads * layout.length * t.head_bytes for t in layout.stages[0])
    return {"rows": rows, "call_ms_1_row": one * 1e3, f"call_ms_{rows}_rows": many * 1e3,
            "stage0_cache_bytes": stage0_cache, "cache_copy_ms": cache_copy_seconds(stage0_cache) * 1e3,
            "moved_bytes_1_row": list(one_moved), f"moved_bytes_{rows}_rows": list(many_moved),
            "step_bytes_1_row": list(layout.step_bytes(1)), f"step_bytes_{rows}_rows": list(layout.step_bytes(rows))}


def verdict(r: dict) -> tuple:
    """(failures, a summary line)."""
    rows, failed = r["rows"], []
    extra = r[f"call_ms_{rows}_rows"] - r["call_ms_1_row"]
    summary = (f"stage 0: {r['call_ms_1_row']:.3f} ms at 1 row, {r[f'call_ms_{rows}_rows']:.3f} ms at {rows} rows; "
               f"copying its cache ({r['stage0_cache_bytes'] / 1e6:.1f} MB) once takes {r['cache_copy_ms']:.3f} ms")
    if extra >= 0.5 * r["cache_copy_ms"]:
        failed.append(f"{rows} rows cost {extra:.3f} ms more than 1, at least half a copy of the cache")
    for n in ("1_row", f"{rows}_rows"):
        if r[f"moved_bytes_{n}"] != r[f"step_bytes_{n}"]:
            failed.append(f"copied {r[f'moved_bytes_{n}']} bytes (to device, to host) per call at "
                          f"{n.replace('_', ' ')}, the step tensors are {r[f'step_bytes_{n}']}")
    return failed, summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("backend", choices=["tensorrt", "onnxruntime-cuda"])
    p.add_argument("--json", help="append the result as one JSON line to this file")
    args = p.parse_args(argv)
    try:
        with Generator(args.model_dir, backend=args.backend) as gen:
            result = measure(gen)
    except DndError as e:
        print(f"{args.backend}: FAILED: {e}")
        return 1
    failed, summary = verdict(result)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"backend": args.backend, "model_dir": args.model_dir, **result,
                                "passed": not failed}) + "\n")
    print(f"{args.backend}: " + (f"FAILED: {'; '.join(failed)} ({summary})" if failed else f"ok: {summary}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
