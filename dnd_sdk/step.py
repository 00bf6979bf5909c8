"""One latent position of every image in a batch: the numpy mirror of gpt-fast's `decode_one_token`.

    tokens = run_position(backend, tables, batch)          # int64 [images, D]

A step embeds what each image fed last (its class at position 0, the summed depth embeddings of its
previous cell after that), runs the D stage graphs over every row, and between them samples depth
k's token of each image (`sampler.sample_images`) and adds its embedding to the image's rows. It
is a pure function of the backend, the embedding tables and the images' state: which images run,
and in which rows, is the scheduler's business (`dnd_sdk.scheduler`).
"""
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .backends.base import Backend
from .sampler import SamplingParams, embed_codes, sample_images


@dataclass(frozen=True)
class Embeddings:
    """The tables a step reads, float32, and the class row an unconditional (guidance) row is given."""
    tokens: np.ndarray         # [vocab_size, d]
    classes: np.ndarray        # [num_classes (+1 null), d]
    null_class: Optional[int]  # None: the model has no null class, so no request is guided


@dataclass
class Batch:
    """The state of B images at one step. Rows are the backend's cache rows; an image's rows hold
    nothing of any other image, so every image's tokens are those it gets alone."""
    cond: np.ndarray       # [B] int64: each image's row
    uncond: np.ndarray     # [B] int64: its unconditional row under guidance, else -1
    rows: np.ndarray       # [R] int64: every row in use...
    owner: np.ndarray      # [R] int64: ...and the image it runs
    width: int             # rows a backend call runs: one past the highest in use (free rows below it run idle)
    positions: np.ndarray  # [B] int64: the latent position each samples now (0: it feeds its class)
    previous: np.ndarray   # [B, D] int64: the codes of its previous cell (read where its position > 0)
    labels: np.ndarray     # [B] int64: its class (read where its position is 0)
    u: np.ndarray          # [B, D] float64: its uniforms for this position
    params: list[SamplingParams]


@dataclass
class StepTimes:
    """Seconds spent in each part of the work while it is installed (`Scheduler.times`): what
    `dnd bench --profile` reports. None installed, nothing is timed."""
    embedding: float = 0.0  # the hidden state fed to stage 0, and each depth's token embeddings
    stages: float = 0.0     # the backend's stage calls
    sampling: float = 0.0   # guidance, filtering and drawing the tokens
    decoder: float = 0.0    # the backend's decoder calls (on the decode thread)
    steps: int = 0


def run_position(backend: Backend, tables: Embeddings, batch: Batch, times: Optional[StepTimes] = None) -> np.ndarray:
    """Sample the codes of one latent position of every image in `batch`. Returns int64 [B, D]."""
    lap = _stopwatch(times)
    images, depth = batch.u.shape
    rows, owner, n, d = batch.rows, batch.owner, batch.width, tables.tokens.shape[1]
    positions = np.zeros(n, np.int64)  # a free row runs idle at position 0
    positions[rows] = batch.positions[owner]
    fed = embed_codes(tables.tokens, batch.previous[:, None, :])[:, 0]  # [B, d], summed as the model sums
    starting = np.flatnonzero(batch.positions == 0)
    if starting.size:  # the condition token: the class, and the null class on an unconditional row
        fed[starting] = tables.classes[batch.labels[starting]]
    hidden = np.zeros((n, 1, d), np.float32)
    hidden[rows, 0] = fed[owner]
    if starting.size and tables.null_class is not None:
        uncond = batch.uncond[starting]
        hidden[uncond[uncond >= 0], 0] = tables.classes[tables.null_class]
    tokens = np.empty((images, depth), np.int64)
    for k in range(depth):
        lap("embedding")
        logits, hidden_out = backend.stage_step(k, hidden, positions)
        lap("stages")
        tokens[:, k] = sample_images(logits, batch.cond, batch.uncond, batch.u[:, k], batch.params, k)
        lap("sampling")
        if k < depth - 1:  # every row of an image gets its token
            add = np.zeros((n, 1, d), np.float32)
            add[rows, 0] = tables.tokens[tokens[owner, k]]
            hidden = hidden_out + add
    lap("embedding")
    if times is not None:
        times.steps += 1
    return tokens


def _stopwatch(times: Optional[StepTimes]) -> Callable[[str], None]:
    """lap(part) adds the seconds since the previous lap to `times.part`; without `times` it does nothing."""
    if times is None:
        return _no_lap
    last = time.perf_counter()

    def lap(part: str) -> None:
        nonlocal last
        now = time.perf_counter()
        setattr(times, part, getattr(times, part) + now - last)
        last = now
    return lap


def _no_lap(part: str) -> None:
    pass
