"""The backend interface: what `Generator` needs from an inference engine, in the shape of Polygraphy's runners."""
from abc import ABC, abstractmethod
from typing import Optional

import numpy as np


class Backend(ABC):
    """Runs the graphs of one model folder. Use as a context manager, or call `close()`.

    A backend is built as `cls(model_dir, manifest, **options)` and raises
    `BackendUnavailableError` when it cannot run on this machine, so that `backend="auto"`
    can fall through to the next one.

    Attributes:
        name (str): what `Generator.backend_name` reports, e.g. "onnxruntime-cpu".
        max_batch (Optional[int]): the most rows a stage call accepts (an engine's profile);
            None means no limit. Guidance counts double: B images are 2B rows.
    """
    name: str = "base"
    max_batch: Optional[int] = None

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
        """Start new sequences: empty the KV cache of every stage for `rows` rows."""

    @abstractmethod
    def stage_step(self, k: int, hidden: np.ndarray) -> tuple:
        """Run stage k on hidden [rows, S, d] float32 after its cached past, and keep its present as the next past.

        Returns:
            (logits [rows, V] float32, hidden_out [rows, S, d] float32). IMPORTANT: the arrays
            may be buffers the backend reuses; they are valid until the next call of stage k.
        """

    def close(self) -> None:
        """Release sessions and device memory."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
