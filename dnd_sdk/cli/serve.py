"""`dnd serve MODEL`: a thin wrapper over `dnd_sdk.serve.run_server` (needs the `serve` extra)."""
import logging
from pathlib import Path
from typing import Optional

import click

from ..generator import Generator
from ..serve import BODY_TIMEOUT, HEADER_TIMEOUT, MAX_CONNECTIONS, bind, run_server
from .options import backend_options


class _Echo(logging.Handler):
    """Log records as lines on stdout through click.echo, which flushes each: none is lost at a signal."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record))


def _log_requests() -> None:
    """The request lines and the shutdown line of dnd_sdk.serve, whatever -v says about the rest."""
    log = logging.getLogger("dnd_sdk.serve")
    handler = _Echo()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


@click.command("serve")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0: any free port, printed at start).")
@click.option("--max-batch", type=click.IntRange(min=1),
              help="Rows per backend call, shared by all requests; guidance takes two per image. "
                   "[default: the engines' limit, else 64]")
@click.option("--max-queue", type=click.IntRange(min=1), default=256, show_default=True,
              help="Requests that may wait for a row; more get HTTP 429.")
@click.option("--timeout", type=float, default=300.0, show_default=True,
              help="Seconds a request may take before HTTP 504.")
@click.option("--header-timeout", type=float, default=HEADER_TIMEOUT, show_default=True,
              help="Seconds a request head may take to arrive, all of it; then the connection is closed.")
@click.option("--body-timeout", type=float, default=BODY_TIMEOUT, show_default=True,
              help="Seconds a request body may take to arrive; then HTTP 408.")
@click.option("--max-connections", type=click.IntRange(min=1), default=MAX_CONNECTIONS, show_default=True,
              help="Open connections at most (fewer if the open-files limit needs it); past it, of those "
                   "still sending a request, the one at it longest is closed.")
@backend_options
def serve(model: Path, host: str, port: int, max_batch: Optional[int], max_queue: int, timeout: float,
          header_timeout: float, body_timeout: float, max_connections: int, backend: dict) -> None:
    """Serve MODEL over HTTP: POST /v1/images, OpenAI's POST /v1/images/generations and GET /v1/models,
    /health, /metrics, and a page at / to generate in the browser.

    One process, one Generator, one queue: concurrent requests share backend batches. SIGTERM stops
    accepting, finishes the requests in flight, then exits. One line per request goes to stdout.
    """
    with Generator(model, **backend, max_batch=max_batch, max_queue=max_queue) as gen:
        sock = bind(host, port)

        def announce(connections: int) -> None:
            address = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL takes brackets
            click.echo(f"serving {model} on http://{address}:{sock.getsockname()[1]} ({gen.backend_name}, "
                       f"{gen.scheduler.max_rows} rows per call, at most {connections} connections)")
        _log_requests()
        run_server(gen, sock, timeout, header_timeout=header_timeout, body_timeout=body_timeout,
                   max_connections=max_connections, on_start=announce)
