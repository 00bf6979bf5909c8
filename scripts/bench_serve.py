"""Load test of `dnd serve` on loopback: images/s and p50/p95 latency at several concurrencies, each
client asking for one image per request, against serial single-image calls (concurrency 1); and, in
the same run, `dnd bench`'s batch-16-vs-batch-1 gain of the library, the most batching can give.

    python scripts/bench_serve.py out/model --checkpoint models/words/checkpoint.pt --threads 1 -o serve.json

Target: at concurrency 16, the gain over concurrency 1 is at least 0.8x the `dnd bench` gain.
The load is bounded: --requests per concurrency level (at least 2x the concurrency), after a warm-up.
"""
import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(base: str, concurrency: int, requests: int, num_classes: int) -> dict:
    """`requests` one-image requests from `concurrency` clients; each image a different (label, seed)."""
    latencies = []

    async def client(http, indices):
        for i in indices:
            t0 = time.perf_counter()
            r = await http.post("/v1/images", json={"labels": [i % num_classes], "seed": i})
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)

    async with httpx.AsyncClient(base_url=base, timeout=600, limits=httpx.Limits(max_connections=concurrency)) as http:
        warm_up = iter(range(2 * concurrency))  # sessions, threads, connections
        await asyncio.gather(*(client(http, warm_up) for _ in range(concurrency)))
        latencies.clear()
        indices = iter(range(requests))  # shared: every client takes the next one
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http, indices) for _ in range(concurrency)))
        seconds = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": requests, "images_per_s": round(requests / seconds, 3),
            "p50_s": round(float(np.percentile(latencies, 50)), 4),
            "p95_s": round(float(np.percentile(latencies, 95)), 4)}


def library_gain(model: Path, checkpoint: Path, threads: int) -> dict:
    """`dnd bench`'s runtime images/s at batch 16 over batch 1, same model and threads."""
    out = subprocess.run([str(BIN / "dnd"), "bench", "--checkpoint", str(checkpoint), "--model", str(model),
                          "--batch", "1", "--batch", "16", "--num-batches", "2", "--repeats", "2",
                          "--threads", str(threads)], check=True, capture_output=True, text=True).stdout
    rows = {r["batch_size"]: r["runtime_images_per_s"] for r in json.loads(out)["results"]}
    return {"batch1_images_per_s": rows[1], "batch16_images_per_s": rows[16], "gain": round(rows[16] / rows[1], 3)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="an exported model folder")
    p.add_argument("--checkpoint", type=Path, help="its checkpoint.pt, for the `dnd bench` comparison")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of the server (and of dnd bench)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    p.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    p.add_argument("-o", "--out", type=Path, help="also write the JSON here")
    a = p.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(BIN / "dnd"), "serve", str(a.model), "--port", str(port),
                               "--threads", str(a.threads), "--backend", "onnxruntime-cpu"],
                              stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": str(a.threads)})
    try:
        for _ in range(600):
            try:
                model = httpx.get(f"{base}/v1/models").json()["data"][0]
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise SystemExit("the server did not start")
        levels = [asyncio.run(load(base, c, max(a.requests, 2 * c), len(model["labels"]))) for c in a.concurrency]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    serial = levels[0]["images_per_s"] if a.concurrency[0] == 1 else None
    for row in levels:
        row["gain_over_serial"] = round(row["images_per_s"] / serial, 3) if serial else None
    report = {"model": str(a.model), "backend": model["backend"], "threads": a.threads,
              "sampler_defaults": model["sampler_defaults"], "levels": levels}
    if a.checkpoint is not None:
        report["dnd_bench"] = library_gain(a.model, a.checkpoint, a.threads)
        at16 = next((r for r in levels if r["concurrency"] == 16), None)
        if at16 and serial:
            report["target"] = {"concurrency16_gain": at16["gain_over_serial"],
                                "needed": round(0.8 * report["dnd_bench"]["gain"], 3),
                                "met": at16["gain_over_serial"] >= 0.8 * report["dnd_bench"]["gain"]}
    text = json.dumps(report, indent=2)
    if a.out:
        a.out.write_text(text + "\n")
    print(text)
    print("\n| concurrency | images/s | p50 latency (s) | p95 latency (s) | gain over serial |\n|---|---|---|---|---|")
    for r in levels:
        print(f"| {r['concurrency']} | {r['images_per_s']} | {r['p50_s']} | {r['p95_s']} | {r['gain_over_serial']} |")


if __name__ == "__main__":
    main()
