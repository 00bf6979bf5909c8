"""`dnd serve` on 127.0.0.1 with a real HTTP client: same bytes as the library, typed HTTP errors, graceful SIGTERM."""
import asyncio
import base64
import contextlib
import json
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from idle import scheduler_idle
from live_server import ThreadedServer, metrics_once_dropped

from dnd_sdk import Generator
from dnd_sdk.batch import BatchJob, run_batch
from dnd_sdk.serve_steps import MAX_BODY_BYTES, png as _png

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


@pytest.mark.parametrize("body, fragment", [
    (b'{"seed": 1' + b"0" * 5000 + b"}", "the body holds an integer of 5001 digits; every integer a request takes"),
    (b'{"labels": ["' + b"9" * 5000 + b'"]}', "class id 999999999999999999999999999..."),
    (b'{"image_indices": [[1], [2, 3]]}', "image_indices must be a flat list of 1 to 10,000,000 integers >= 0"),
    (b'{"image_indices": [9223372036854775808]}', "image_indices must be a flat list"),
    (b'{"cfg_scale": 1' + b"0" * 400 + b".5}", "cfg_scale must be a finite number, got inf"),
    (b'{"head_temperatures": [1, 1' + b"0" * 30 + b"]}", "the body holds an integer of 31 digits"),
    (b'{"num": 1e300}', r"num must be an integer in [1, 10000000], got 1e+300"),
])
def test_values_python_cannot_convert_get_400_and_queue_nothing(url, body, fragment):
    r = httpx.post(f"{url}/v1/images", content=body)
    assert r.status_code == 400 and fragment in r.json()["error"], r.text
    assert "dnd_queue_depth 0.0" in httpx.get(f"{url}/metrics").text


def test_models_and_health(url):
    models = httpx.get(f"{url}/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["object"] == "model"
    model = models["data"][0]
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
            assert scheduler_idle(gen)  # the scheduler drops the request at its next step


class DndServe:
    """`dnd serve MODEL --port 0 ...` in a process of its own (`open_files`: its limit of open files);
    its first line says where it serves, and the rest of stdout is its log."""

    def __init__(self, model, *flags, open_files=None):
        command = [str(Path(sys.executable).parent / "dnd"), "serve", str(model), "--port", "0", "--threads", "1",
                   "--backend", "onnxruntime-cpu", *flags]
        if open_files is not None:  # the shell's ulimit: preexec_fn is unsafe while this process runs threads
            command = ["sh", "-c", f'ulimit -n {open_files} && exec "$0" "$@"', *command]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def __enter__(self):
        ready, _, _ = select.select([self.process.stdout], [], [], 60)
        line = self.process.stdout.readline() if ready else ""  # it binds before it says where: the port is its own
        match = re.search(r"on http://127\.0\.0\.1:(\d+) \(.*at most (\d+) connections\)", line)
        if not match:
            self.__exit__()
            pytest.fail(f"dnd serve did not say where it serves: {line!r} {self.process.stderr.read()[-2000:]}")
        self.port, self.connections = int(match[1]), int(match[2])
        self.base = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.communicate()


def test_sigterm_drains_the_requests_in_flight_and_each_is_logged(tiny_model_dir):
    with DndServe(tiny_model_dir, "--max-batch", "8") as server:
        base = server.base

        async def load():
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                posts = [asyncio.ensure_future(client.post("/v1/images", json={"num": 6, "seed": i, "cfg_scale": 1}))
                         for i in range(8)]
                for _ in range(400):  # every request is in the server before the signal
                    text = (await client.get("/metrics")).text
                    if "dnd_requests_in_progress 8.0" in text:
                        break
                    await asyncio.sleep(0.01)
                server.process.send_signal(signal.SIGTERM)
                return await asyncio.gather(*posts)

        responses = asyncio.run(load())
        assert [r.status_code for r in responses] == [200] * 8
        assert all(len(r.json()["images"]) == 6 for r in responses)
        assert server.process.wait(30) == -signal.SIGTERM  # uvicorn re-raises the signal once drained, as is usual
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{base}/health")
        log = server.process.stdout.read().splitlines()
    # one line per request (method, path, status, images, seconds), then the shutdown line
    assert len([x for x in log if re.search(r" POST /v1/images 200 6 images \d+\.\d{3} s$", x)]) == 8, log
    assert any(re.search(r" GET /metrics 200 0 images \d+\.\d{3} s$", x) for x in log), log
    assert re.search(rf" stopped serving {re.escape(str(tiny_model_dir))} after \d+ requests, 48 images$", log[-1]), log


def test_a_port_in_use_is_one_line_naming_the_flag_and_nothing_is_announced(tiny_model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        dnd = Path(sys.executable).parent / "dnd"
        run = subprocess.run([str(dnd), "serve", str(tiny_model_dir), "--port", str(port), "--threads", "1"],
                             capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stdout == "", run.stdout
    assert run.stderr == f"Error: --port {port} on 127.0.0.1 is in use; choose another --port, or stop what holds it\n"


@pytest.mark.parametrize("flags, message", [
    (["--timeout", "nan"], "Error: --timeout must be a finite number, got nan\n"),
    (["--header-timeout", "0"], "Error: --header-timeout must be a number of seconds > 0 and at most 9223372036"),
    (["--body-timeout", "1e300"], "Error: --body-timeout must be a number of seconds > 0 and at most 9223372036"),
])
def test_a_limit_no_clock_can_keep_is_one_line_naming_the_flag(tiny_model_dir, flags, message):
    dnd = Path(sys.executable).parent / "dnd"
    run = subprocess.run([str(dnd), "serve", str(tiny_model_dir), "--port", "0", "--threads", "1", *flags],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stdout == "" and run.stderr.startswith(message), run.stderr


SLOW_HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\n"
SLOW_BODY = b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{"


def _slow_connections(port, count, start=SLOW_HEAD):
    """`count` connections that each send `start`, the start of a request, and never finish it."""
    held = []
    for _ in range(count):
        conn = socket.socket()
        conn.setblocking(False)
        conn.connect_ex(("127.0.0.1", port))
        held.append(conn)
    time.sleep(0.3)
    for conn in held:
        with contextlib.suppress(OSError):
            conn.send(start)
    return held


def _dribble(held, stop):
    while not stop.is_set():  # a byte at a time: a deadline renewed by each byte would never end
        for conn in held:
            with contextlib.suppress(OSError):
                conn.send(b"X")
        stop.wait(0.25)


@pytest.mark.parametrize("start", [SLOW_HEAD, SLOW_BODY], ids=["head", "body"])
def test_slow_connections_past_the_open_files_limit_leave_the_server_answering(tiny_model_dir, start):
    # 500 open files: a few hundred slow clients exhaust them at default flags, as 1,100 exhaust 1024
    with DndServe(tiny_model_dir, open_files=500) as server:
        assert server.connections < 500  # the cap stays below the open-files limit
        held, stop = _slow_connections(server.port, 600, start), threading.Event()
        dribbler = threading.Thread(target=_dribble, args=(held, stop))
        dribbler.start()
        try:
            for _ in range(3):
                assert httpx.get(f"{server.base}/health", timeout=5).json() == {"status": "ok"}
                r = httpx.post(f"{server.base}/v1/images", json={"labels": ["cat"], "cfg_scale": 1}, timeout=5)
                assert r.status_code == 200 and len(r.json()["images"]) == 1
        finally:
            stop.set()
            dribbler.join()
            for conn in held:
                conn.close()


def _closed_after(conn, seconds):
    """Seconds until the server closed `conn`, reading what it sends, or None if still open after `seconds`."""
    t0, end = time.monotonic(), time.monotonic() + seconds
    conn.settimeout(0.05)
    while time.monotonic() < end:
        with contextlib.suppress(socket.timeout):
            if conn.recv(65536) == b"":
                return time.monotonic() - t0
    return None


def test_a_request_head_or_body_that_comes_a_byte_at_a_time_meets_its_deadline(tiny_model_dir):
    with DndServe(tiny_model_dir, "--header-timeout", "1", "--body-timeout", "1") as server:
        head, stop = _slow_connections(server.port, 1), threading.Event()
        dribbler = threading.Thread(target=_dribble, args=(head, stop))
        dribbler.start()
        try:
            closed = _closed_after(head[0], 4)
        finally:
            stop.set()
            dribbler.join()
            head[0].close()
        assert closed is not None and 0.5 < closed < 2, closed
        with socket.create_connection(("127.0.0.1", server.port)) as body:
            body.sendall(b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            body.settimeout(4)
            reply = b"".join(iter(lambda: body.recv(65536), b""))  # to the end: the 408 closes the connection
        assert reply.startswith(b"HTTP/1.1 408 ") and b"the body did not arrive within 1 s" in reply
        with socket.create_connection(("127.0.0.1", server.port)) as keep_alive:  # the next head has its deadline too
            keep_alive.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\n")
            closed = _closed_after(keep_alive, 4)
        assert closed is not None and closed < 2, closed
        assert httpx.get(f"{server.base}/health").status_code == 200


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
    metrics = metrics_once_dropped(base)  # the client is gone: the server drops the request at the scheduler's next step
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
