"""Load test of `dnd serve` on loopback: images/s and p50/p95 latency at several concurrencies, each
client asking for one image per request, against serial single-image calls (concurrency 1); and, in
the same run, `dnd bench`'s batch-16-vs-batch-1 gain of the library, the most batching can give.

    python scripts/bench_serve.py out/model --checkpoint models/words/checkpoint.pt --threads 1 -o serve.json

Target: at concurrency 16, the gain over concurrency 1 is at least 0.8x the `dnd bench` gain.
The load is bounded: --requests per concurrency level (at least 2x the concurrency), after a warm-up.

--route generations sends the same load to OpenAI's POST /v1/images/generations instead of POST
/v1/images (the same images: label i % classes, seed i); with --partial-images K each request streams
(Server-Sent Events, K partial images before its image), read to its end, and the report adds the
latency of the first partial image:

    python scripts/bench_serve.py out/model --concurrency 16 --requests 512 --route images
    python scripts/bench_serve.py out/model --concurrency 16 --requests 512 --route generations
    python scripts/bench_serve.py out/model --concurrency 16 --requests 512 --route generations --partial-images 2
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
from typing import Optional

import httpx
import numpy as np

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_image(http, route: str, partial_images: int, label: str, seed: int) -> Optional[float]:
    """One request for one image, answered in full; the seconds to its first partial image, if it streams."""
    if route == "images":
        (await http.post("/v1/images", json={"labels": [label], "seed": seed})).raise_for_status()
        return None
    body = {"prompt": label, "seed": seed}
    if not partial_images:
        (await http.post("/v1/images/generations", json=body)).raise_for_status()
        return None
    t0, first = time.perf_counter(), None
    async with http.stream("POST", "/v1/images/generations",
                           json={**body, "stream": True, "partial_images": partial_images}) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if first is None and line == "event: image_generation.partial_image":
                first = time.perf_counter() - t0
            if line == "event: error":
                raise RuntimeError(f"the stream ended in an error: {await r.aread()!r}")
    return first


async def load(base: str, concurrency: int, requests: int, labels: list, route: str = "images",
               partial_images: int = 0) -> dict:
    """`requests` one-image requests from `concurrency` clients; each image a different (label, seed)."""
    latencies, firsts = [], []

    async def client(http, indices):
        for i in indices:
            t0 = time.perf_counter()
            first = await one_image(http, route, partial_images, labels[i % len(labels)], i)
            latencies.append(time.perf_counter() - t0)
            if first is not None:
                firsts.append(first)

    async with httpx.AsyncClient(base_url=base, timeout=600, limits=httpx.Limits(max_connections=concurrency)) as http:
        warm_up = iter(range(2 * concurrency))  # sessions, threads, connections
        await asyncio.gather(*(client(http, warm_up) for _ in range(concurrency)))
        latencies.clear()
        firsts.clear()
        indices = iter(range(requests))  # shared: every client takes the next one
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http, indices) for _ in range(concurrency)))
        seconds = time.perf_counter() - t0
    level = {"concurrency": concurrency, "requests": requests, "images_per_s": round(requests / seconds, 3),
             "p50_s": round(float(np.percentile(latencies, 50)), 4),
             "p95_s": round(float(np.percentile(latencies, 95)), 4)}
    if firsts:
        level["first_partial_p50_s"] = round(float(np.percentile(firsts, 50)), 4)
    return level


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
    p.add_argument("--route", choices=["images", "generations"], default="images",
                   help="POST /v1/images, or OpenAI's POST /v1/images/generations")
    p.add_argument("--partial-images", type=int, default=0, choices=range(4),
                   help="with --route generations: stream, with this many partial images per image")
    p.add_argument("-o", "--out", type=Path, help="also write the JSON here")
    a = p.parse_args()
    if a.partial_images and a.route != "generations":
        p.error("--partial-images needs --route generations")

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
        levels = [asyncio.run(load(base, c, max(a.requests, 2 * c), model["labels"], a.route, a.partial_images))
                  for c in a.concurrency]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    serial = levels[0]["images_per_s"] if a.concurrency[0] == 1 else None
    for row in levels:
        row["gain_over_serial"] = round(row["images_per_s"] / serial, 3) if serial else None
    report = {"model": str(a.model), "route": a.route, "partial_images": a.partial_images,
              "backend": model["backend"], "threads": a.threads,
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
