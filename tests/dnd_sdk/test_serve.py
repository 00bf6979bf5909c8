"""`dnd serve` on 127.0.0.1 with a real HTTP client: same bytes as the library, typed HTTP errors, graceful SIGTERM."""
import asyncio
import base64
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from dnd_sdk import Generator
from dnd_sdk.batch import BatchJob, run_batch
from dnd_sdk.serve import MAX_BODY_BYTES, _png, create_app

BODIES = [
    {"labels": ["cat"], "seed": 0, "cfg_scale": 1.0},
    {"labels": ["dog", 2], "seed": 1, "cfg_scale": 2.0},
    {"num": 2, "seed": 2, "temperature": 0.0},
    {"labels": [3], "seed": 3, "cfg_scale": 3.0, "top_k": 5},
    {"labels": "bird", "start": 5, "seed": 4, "top_p": 0.7, "cfg_scale": 1.0},
    {"labels": ["fish"], "seed": 5, "head_temperatures": [0.5, 1.2]},
    {"num": 1, "seed": 6, "temperature": 0.6, "top_k": 10, "top_p": 0.9},
    {"labels": ["cat"], "image_indices": [9], "seed": 7, "cfg_scale": 2.0},
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadedServer:
    """uvicorn serving create_app(gen) on a free loopback port, in a thread of this process."""

    def __init__(self, gen, timeout=60.0):
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(gen, timeout), host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return f"http://127.0.0.1:{self.port}"
            time.sleep(0.025)
        raise RuntimeError("the server did not start")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1) as gen:
        yield gen


@pytest.fixture(scope="module")
def url(tiny_model_dir):
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1, max_batch=16) as gen:
        with ThreadedServer(gen) as base:
            yield base


async def _post_all(base, bodies, headers=None):
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        return await asyncio.gather(*(client.post("/v1/images", json=b, headers=headers) for b in bodies))


def _pngs(response) -> list:
    return [base64.b64decode(im["png"]) for im in response.json()["images"]]


def test_32_concurrent_requests_get_the_bytes_of_serial_calls(url, reference):
    bodies = [{**BODIES[i % len(BODIES)], "seed": i} for i in range(32)]
    responses = asyncio.run(_post_all(url, bodies))
    for body, r in zip(bodies, responses):
        assert r.status_code == 200, r.text
        assert _pngs(r) == [_png(im) for im in reference.sample(**body)]
    meta = responses[1].json()["images"][1]
    assert (meta["index"], meta["label"], meta["label_name"], meta["seed"], meta["cfg_scale"]) == (1, 2, "bird", 1, 2.0)
    metrics = httpx.get(f"{url}/metrics").text
    assert "dnd_queue_depth 0.0" in metrics and 'dnd_request_seconds_count{status="200"}' in metrics
    batches = [line for line in metrics.splitlines() if line.startswith('dnd_batch_images_bucket{le="4.0"}')]
    total = [line for line in metrics.splitlines() if line.startswith("dnd_batch_images_count")]
    assert float(batches[0].split()[-1]) < float(total[0].split()[-1])  # some steps ran more than 4 images


def test_png_endpoint_matches_dnd_generate(url, reference, tmp_path):
    r = httpx.post(f"{url}/v1/images", json={"labels": ["dog"], "seed": 3}, headers={"Accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert json.loads(r.headers["x-image-metadata"])["label_name"] == "dog"
    run_batch(reference, tmp_path / "out", BatchJob(labels=["dog"], seed=3), progress=False)
    assert r.content == (tmp_path / "out" / "000000.png").read_bytes()
    assert httpx.post(f"{url}/v1/images", json={"num": 2}, headers={"Accept": "image/png"}).status_code == 406


def test_bad_requests_get_400_and_their_neighbours_succeed(url):
    bodies = [BODIES[0], {"labels": ["zebra"]}, BODIES[1], {"temperature": -1}, {"seed": 0, "colour": "red"}]
    responses = asyncio.run(_post_all(url, bodies))
    assert [r.status_code for r in responses] == [200, 400, 200, 400, 400]
    assert "unknown label 'zebra'" in responses[1].json()["error"]
    assert "temperature must be >= 0" in responses[3].json()["error"]
    assert "['colour']" in responses[4].json()["error"]
    assert httpx.post(f"{url}/v1/images", content=b"{not json").status_code == 400
    r = httpx.post(f"{url}/v1/images", content=b"[" * 100_000 + b"]" * 100_000)  # deeper than json can parse
    assert r.status_code == 400 and r.json()["error"].startswith("the body is nested too deeply")
    r = httpx.post(f"{url}/v1/images", content=b" " * (MAX_BODY_BYTES + 1))
    assert r.status_code == 413 and "the body is over 16 MiB" in r.json()["error"]
    chunked = iter([b" " * (1 << 20)] * 17)  # no Content-Length: refused while it streams
    assert httpx.post(f"{url}/v1/images", content=chunked).status_code == 413
    assert httpx.post(f"{url}/v1/images", json=BODIES[0]).status_code == 200  # and the server goes on


def test_models_and_health(url):
    model = httpx.get(f"{url}/v1/models").json()["models"][0]
    assert model["labels"] == ["cat", "dog", "bird", "fish"] and model["backend"] == "onnxruntime-cpu"
    assert model["sampler_defaults"]["cfg_scale"] == 2.0 and model["max_batch_rows"] == 16
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}


def test_overload_gets_429_and_a_timeout_504(tiny_model_dir):
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1, max_batch=2, max_queue=1) as gen:
        with ThreadedServer(gen, timeout=30) as base:
            with httpx.Client(base_url=base, timeout=60) as client:
                long = threading.Thread(target=lambda: client.post("/v1/images", json={"num": 40, "cfg_scale": 1}))
                long.start()
                for _ in range(400):  # until the long request waits for rows
                    if "dnd_queue_depth 1.0" in client.get("/metrics").text:
                        break
                    time.sleep(0.005)
                r = client.post("/v1/images", json={"labels": ["cat"]})
                assert r.status_code == 429 and r.headers["retry-after"] == "1"
                assert "max_queue 1" in r.json()["error"]
                long.join(60)
        with ThreadedServer(gen, timeout=1e-3) as base:
            r = httpx.post(f"{base}/v1/images", json={"num": 40, "cfg_scale": 1}, timeout=60)
            assert r.status_code == 504 and "did not finish within 0.001 s" in r.json()["error"]
            for _ in range(200):  # the scheduler drops the request at its next step
                if gen.scheduler.queue_depth == gen.scheduler.images_in_flight == 0:
                    break
                time.sleep(0.01)
            assert gen.scheduler.queue_depth == gen.scheduler.images_in_flight == 0


def test_sigterm_drains_the_requests_in_flight(tiny_model_dir):
    port = _free_port()
    dnd = Path(sys.executable).parent / "dnd"
    server = subprocess.Popen([str(dnd), "serve", str(tiny_model_dir), "--port", str(port), "--threads", "1",
                               "--backend", "onnxruntime-cpu", "--max-batch", "8"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(400):
            try:
                httpx.get(f"{base}/health")
                break
            except httpx.TransportError:
                time.sleep(0.05)

        async def load():
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                posts = [asyncio.ensure_future(client.post("/v1/images", json={"num": 6, "seed": i, "cfg_scale": 1}))
                         for i in range(8)]
                for _ in range(400):  # every request is in the server before the signal
                    text = (await client.get("/metrics")).text
                    if "dnd_requests_in_progress 8.0" in text:
                        break
                    await asyncio.sleep(0.01)
                server.send_signal(signal.SIGTERM)
                return await asyncio.gather(*posts)

        responses = asyncio.run(load())
        assert [r.status_code for r in responses] == [200] * 8
        assert all(len(r.json()["images"]) == 6 for r in responses)
        assert server.wait(30) == -signal.SIGTERM  # uvicorn re-raises the signal once drained, as is usual
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{base}/health")
    finally:
        server.kill()
        server.wait()


@pytest.fixture(scope="module")
def one_row(tiny_model_dir):
    """A server running one row per call: a long request holds it for a long time."""
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1, max_batch=1) as gen:
        with ThreadedServer(gen) as base:
            yield gen, base


def test_a_client_that_disconnects_has_its_request_dropped(one_row):
    gen, base = one_row
    body = json.dumps({"num": 100_000, "cfg_scale": 1}).encode()  # minutes of work, one row at a time
    with socket.create_connection(("127.0.0.1", httpx.URL(base).port)) as client:
        client.sendall(b"POST /v1/images HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        for _ in range(400):  # until the request holds the row
            if gen.scheduler.images_in_flight:
                break
            time.sleep(0.01)
        assert gen.scheduler.images_in_flight == 1 and gen.scheduler.queue_depth == 1
    for _ in range(400):  # the client is gone: the server drops the request at the scheduler's next step
        metrics = httpx.get(f"{base}/metrics").text
        if "dnd_images_in_flight 0.0" in metrics and "dnd_requests_in_progress 0.0" in metrics:
            break
        time.sleep(0.01)
    assert gen.scheduler.images_in_flight == gen.scheduler.queue_depth == 0
    assert 'dnd_request_seconds_count{status="499"} 1.0' in metrics
    r = httpx.post(f"{base}/v1/images", json={"labels": ["cat"], "cfg_scale": 1}, timeout=30)
    assert r.status_code == 200 and len(r.json()["images"]) == 1


def test_guidance_on_one_row_names_what_the_client_can_change(one_row):
    _, base = one_row
    r = httpx.post(f"{base}/v1/images", json={"labels": [0], "cfg_scale": 2})
    assert r.status_code == 400
    assert r.json()["error"].endswith("but the server's --max-batch allows at most 1; use cfg_scale 1, or the "
                                      "server's --max-batch >= 2")
    assert "batch_size" not in r.json()["error"]
