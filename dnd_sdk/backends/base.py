"""The backend interface: what `Generator` needs from an inference engine, in the shape of Polygraphy's runners."""
from abc import ABC, abstractmethod
from typing import Any, Optional

import numpy as np

from ..errors import InvalidInputError


class Backend(ABC):
    """Runs the graphs of one model folder. Use as a context manager, or call `close()`.

    A backend is built as `cls(model_dir, manifest, **options)` and raises
    `BackendUnavailableError` when it cannot run on this machine, so that `backend="auto"`
    can fall through to the next one.

    Attributes:
        name (str): what `Generator.backend_name` reports, e.g. "onnxruntime-cpu".
        max_batch (Optional[int]): the most rows a stage call accepts (an engine's profile);
            None means no limit. Guidance counts double: B images are 2B rows.
        decodes_beside_steps (bool): whether `run("decoder", ...)` may run on one thread while
            `reset` or `stage_step` run on another. The scheduler decodes on a thread of its own; where
            this is False it makes the two take turns (`dnd_sdk.decode_queue`).
    """
    name: str = "base"
    max_batch: Optional[int] = None
    decodes_beside_steps: bool = False

    @abstractmethod
    def run(self, graph: str, feeds: dict) -> dict:
        """One plain call of a graph (the decoder, or a check).

        Args:
            graph (str): a key of manifest.files, e.g. "decoder".
            feeds (dict[str, np.ndarray]): every input of the graph.

        Returns:
            dict[str, np.ndarray]: every output of the graph, by name.
        """

    @abstractmethod
    def reset(self, rows: int) -> None:
        """Start new sequences: empty the KV cache of every stage for `rows` rows. Later calls may use
        fewer rows: they run the first rows of the cache, the others keep their contents."""

    @abstractmethod
    def stage_step(self, k: int, hidden: np.ndarray, positions: Optional[np.ndarray] = None) -> tuple:
        """Run stage k on one new position per row, hidden [rows, 1, d] float32 (rows <= the rows of
        `reset`: the first ones), and write its keys and values into the row's cache slot.

        Args:
            positions: [rows] ints, each row's absolute position (0 = the condition token); the row
                sees its cache slots below it. None: one past the row's previous call of stage k
                (0 after reset). Rows may sit at different positions in one call; a row given position 0
                starts a new sequence (its old slots are masked out and overwritten as it goes).

        Returns:
            (logits [rows, V] float32, hidden_out [rows, S, d] float32). IMPORTANT: the arrays
            may be buffers the backend reuses; they are valid until the next call of stage k.
        """

    def close(self) -> None:
        """Release sessions and device memory."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RowPositions:
    """Where each row's next token goes in the fixed cache, per stage; shared by the backends."""

    def __init__(self, depth: int, rows: int, length: int):
        self.rows, self.length = rows, length
        self._next = [np.zeros(rows, np.int64) for _ in range(depth)]
        self._slots = np.arange(length)

    def take(self, k: int, rows: int, positions: Optional[np.ndarray] = None) -> tuple:
        """(positions [rows] int64, kv_mask [rows, L] bool) for a call of stage k; InvalidInputError if out of range."""
        if rows > self.rows:  # the cache holds self.rows rows; fewer run the first ones
            raise InvalidInputError(f"stage_step got {rows} rows after reset({self.rows}); call reset(rows) first")
        pos = self._next[k][:rows] if positions is None else np.asarray(positions)
        if pos.shape != (rows,) or pos.dtype.kind not in "iu" or pos.min() < 0 or pos.max() >= self.length:
            raise InvalidInputError(f"positions must be {rows} ints in [0, {self.length}), got {positions!r}")
        pos = pos.astype(np.int64)
        self._next[k][:rows] = pos + 1
        return pos, self._slots[None, :] < pos[:, None]
