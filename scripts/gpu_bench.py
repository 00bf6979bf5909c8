"""One speed figure for gpu-check.sh: a backend's images/s against the PyTorch reference sampler.

    python scripts/gpu_bench.py CHECKPOINT MODEL_DIR BACKEND REFERENCE_DEVICE --json FILE

Runs `dnd bench` (batch 1 and 16, the model's own export or engines), appends its JSON to FILE
as one line, and prints one line that names what the ratio is compared against.
"""
import argparse
import json
import sys

from dnd_bench.bench import bench_command
from dnd_sdk.errors import DndError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("model_dir")
    p.add_argument("backend")
    p.add_argument("reference_device", choices=["cpu", "cuda"])
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    try:
        result = bench_command(args.checkpoint, args.model_dir, [1, 16], num_batches=2, repeats=2,
                               backend=args.backend, reference_device=args.reference_device)
    except DndError as e:
        print(f"FAILED: {e}")
        return 1
    with open(args.json, "a") as f:
        f.write(json.dumps(result) + "\n")
    threads = f", {result['threads']} CPU thread" if args.reference_device == "cpu" else ""
    print("; ".join(f"batch {r['batch_size']}: {r['runtime_images_per_s']} images/s = {r['ratio']}x "
                    f"{result['reference']}{threads} ({r['reference_images_per_s']} images/s)" for r in result["results"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
