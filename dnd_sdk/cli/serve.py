"""`dnd serve MODEL`: a thin wrapper over `dnd_sdk.serve.run_server` (needs the `serve` extra)."""
from pathlib import Path
from typing import Optional

import click

from ..generator import Generator
from ..serve import run_server
from .options import backend_options


@click.command("serve")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1),
              help="Rows per backend call, shared by all requests; guidance takes two per image. "
                   "[default: the engines' limit, else 64]")
@click.option("--max-queue", type=click.IntRange(min=1), default=256, show_default=True,
              help="Requests that may wait for a row; more get HTTP 429.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True,
              help="Seconds a request may take before HTTP 504.")
@backend_options
def serve(model: Path, host: str, port: int, max_batch: Optional[int], max_queue: int, timeout: float,
          backend: dict) -> None:
    """Serve MODEL over HTTP: POST /v1/images, GET /v1/models, /health, /metrics.

    One process, one Generator, one queue: concurrent requests share backend batches. SIGTERM stops
    accepting, finishes the requests in flight, then exits.
    """
    with Generator(model, **backend, max_batch=max_batch, max_queue=max_queue) as gen:
        click.echo(f"serving {model} on http://{host}:{port} ({gen.backend_name}, {gen.scheduler.max_rows} rows "
                   "per call)")
        run_server(gen, host, port, timeout)
