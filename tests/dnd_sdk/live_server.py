"""A server of the tests: `create_app(gen)` on uvicorn, on a free loopback port, in a thread of this process."""
import socket
import threading
import time

import httpx
import uvicorn

from dnd_sdk.serve import create_app


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


def metrics_once_dropped(base):
    """/metrics once no image is in flight and no request in progress (a dropped request's rows are free);
    the last reading if that takes over 4 s."""
    for _ in range(400):
        metrics = httpx.get(f"{base}/metrics").text
        if "dnd_images_in_flight 0.0" in metrics and "dnd_requests_in_progress 0.0" in metrics:
            break
        time.sleep(0.01)
    return metrics
