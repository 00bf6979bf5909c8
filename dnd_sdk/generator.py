"""`Generator`: sample images from an exported model folder with numpy and ONNX Runtime (or TensorRT), no torch.

    gen = Generator("model_dir")                       # backend="auto": TensorRT, ORT CUDA, ORT CPU
    images = gen.sample(labels=["ocean", 3], seed=0)   # list of PIL images
    codes = gen.sample_codes(num=8, seed=0)            # int64 [8, h, w, D], image i of class i % num_classes
    images = gen.decode(codes)
"""
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .backends import open_backend
from .arguments import MAX_IMAGES, MAX_INDEX, integer
from .errors import InvalidInputError
from .images import to_pil
from .manifest import load_manifest
from .model_files import load_embeddings
from .sampler import SamplingParams, decode_n_tokens, image_uniforms

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """A validated sampling request: image j has class `labels[j]` and draws its randomness as image `indices[j]`."""
    labels: np.ndarray   # [n] int64 class ids
    indices: np.ndarray  # [n] int64 image indices for the seeding rule
    seed: int
    params: SamplingParams
    batch_size: int

    def batches(self):
        for lo in range(0, len(self.labels), self.batch_size):
            yield replace(self, labels=self.labels[lo:lo + self.batch_size], indices=self.indices[lo:lo + self.batch_size])


def _float32_table(table: np.ndarray) -> np.ndarray:
    if table.dtype == np.uint16:  # bf16 bit patterns: the top half of a float32
        return (table.astype(np.uint32) << 16).view(np.float32)
    return table.astype(np.float32)


class Generator:
    """Samples images from an exported model folder (see docs/architecture.md, "Exported model folder").

    Args:
        path (str | Path): a folder written by `dnd-export` (or, with the TensorRT backend, `dnd-build`).
        backend (str): "auto" (TensorRT, then ONNX Runtime CUDA, then ONNX Runtime CPU),
            "tensorrt", "onnxruntime-cuda" or "onnxruntime-cpu".
        threads (Optional[int]): CPU threads per ONNX Runtime session; None uses every core.

    Raises:
        ManifestError: not a model folder, or a file does not match its sha256 in manifest.json.
        BackendUnavailableError: the requested backend cannot run here.
    """

    def __init__(self, path, backend: str = "auto", *, threads=None):
        self.path = Path(path)
        # each file is checked against its sha256 as it is read (embeddings here, graphs by the backend)
        self.manifest = m = load_manifest(self.path, verify=False)
        tok, cls = load_embeddings(m)
        self.tok_embeddings = _float32_table(tok)  # [V, d]
        self.cls_embedding = _float32_table(cls)   # [num_classes (+1 null), d]
        self.labels = [str(x) for x in m.labels]
        self.num_classes = len(self.labels)
        self.vocab_size = int(m.model_config["vocab_size"])
        self.latent_shape = (int(m.latent["h"]), int(m.latent["w"]), m.depth)
        self._label_ids = {name: i for i, name in enumerate(self.labels)}
        self.backend = open_backend(self.path, m, backend, threads)
        log.info("dnd_sdk.Generator: %s runs on %s", self.path, self.backend.name)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def close(self) -> None:
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _class_id(self, label) -> int:
        if isinstance(label, str):
            if label in self._label_ids:
                return self._label_ids[label]
            if not label.strip().isdecimal():
                known = ", ".join(self.labels[:8]) + (", ..." if self.num_classes > 8 else "")
                raise InvalidInputError(f"unknown label {label!r}; this model knows {self.num_classes} labels "
                                        f"({known}) or class ids 0..{self.num_classes - 1}", ["labels"])
            label = int(label)
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
            raise InvalidInputError(f"a label is a class name or an int class id, got {label!r}", ["labels"])
        if not 0 <= label < self.num_classes:
            raise InvalidInputError(f"class id {label} is out of range; this model has classes "
                                    f"0..{self.num_classes - 1}", ["labels"])
        return int(label)

    def _given_labels(self, labels) -> list:
        if isinstance(labels, (str, int, np.integer)):
            given = [labels]
        elif isinstance(labels, (list, tuple, range, np.ndarray)):
            given = list(np.asarray(labels).ravel()) if isinstance(labels, np.ndarray) else list(labels)
        else:
            raise InvalidInputError(f"labels must be a class name, an int class id or a list of them, got {labels!r}",
                                    ["labels"])
        if not given or len(given) > MAX_IMAGES:
            raise InvalidInputError(f"labels must hold 1..{MAX_IMAGES:,} class names or ids, got {len(given)}; "
                                    "or pass None", ["labels"])
        return [self._class_id(x) for x in given]

    def _indices(self, given, num, image_indices, start) -> np.ndarray:
        if image_indices is not None:
            if start:
                raise InvalidInputError("give image_indices or start, not both", ["image_indices", "start"])
            indices = np.asarray(image_indices)
            if indices.ndim != 1 or not 0 < len(indices) <= MAX_IMAGES or indices.dtype.kind not in "iu" \
                    or (indices < 0).any() or (indices > MAX_INDEX).any():
                raise InvalidInputError("image_indices must be a non-empty 1-D list of ints >= 0, "
                                        f"got {image_indices!r}", ["image_indices"])
            if num is not None and len(indices) != integer(num, "num", 1, MAX_IMAGES):
                raise InvalidInputError(f"num={num} but {len(indices)} image_indices were given", ["num"])
            return indices.astype(np.int64)
        if num is None:
            num = self.num_classes if given is None else len(given)  # default: one image per class or label
        num = integer(num, "num", 1, MAX_IMAGES)
        return np.arange(num, dtype=np.int64) + integer(start, "start", 0, MAX_INDEX - num)

    def request(self, labels=None, num=None, *, seed=0, cfg_scale=None, temperature=None, top_k=None,
                top_p=None, head_temperatures=None, batch_size=16, image_indices=None, start=0) -> Request:
        """Validate a sampling request before any work; arguments as in `sample`.

        Raises:
            InvalidInputError: naming the first bad argument and what to pass instead.
        """
        given = None if labels is None else self._given_labels(labels)
        indices = self._indices(given, num, image_indices, start)
        # no labels: image index i gets class i % num_classes; else image j gets given[j % len(given)]
        if given is None:
            ids = indices % self.num_classes
        else:
            ids = np.array([given[j % len(given)] for j in range(len(indices))])
        defaults = self.manifest.sampler_defaults
        pick = lambda value, key: defaults[key] if value is None else value  # noqa: E731
        params = SamplingParams(pick(cfg_scale, "cfg_scale"), pick(temperature, "temperature"), pick(top_k, "top_k"),
                                pick(top_p, "top_p"), head_temperatures)
        params = params.validate(self.vocab_size, self.latent_shape[2], self.manifest.null_class is not None)
        batch_size = integer(batch_size, "batch_size", 1, MAX_IMAGES)
        rows = min(batch_size, len(ids)) * (2 if params.guided else 1)
        limit = self.backend.max_batch
        if limit is not None and rows > limit:
            raise InvalidInputError(
                f"batch_size {batch_size} needs {rows} rows{' (guidance doubles them)' if params.guided else ''}, but "
                f"{self.backend_name} was built for at most {limit}; use batch_size <= "
                f"{limit // 2 if params.guided else limit}", ["batch_size"])
        return Request(ids.astype(np.int64), indices.astype(np.int64), integer(seed, "seed"), params, batch_size)

    def sample_codes(self, labels=None, num=None, **kwargs) -> np.ndarray:
        """Sample latent codes; arguments as in `sample`. Returns int64 [n, h, w, D]."""
        req = self.request(labels, num, **kwargs)
        return np.concatenate([self._codes(part) for part in req.batches()])

    def sample(self, labels=None, num=None, **kwargs) -> list:
        """Sample images.

        Image j of the request is fully determined by (model, its class, the sampling parameters,
        seed, its image index): never by batch size, backend or which other images share the call.

        Args:
            labels: None (image index i gets class i % num_classes), one class (name or id) for all
                images, or a sequence of them (image j gets labels[j % len(labels)]). A string of
                digits that is not a label name is read as a class id.
            num (int): how many images; default len(image_indices), else len(labels) (1 for a single
                label), else num_classes.
            seed (int): request seed >= 0 (default 0).
            cfg_scale, temperature, top_k, top_p: sampling settings; None takes the manifest's
                sampler_defaults. cfg_scale 1 turns guidance off; temperature 0 is greedy.
            head_temperatures (Optional[list[float]]): one temperature per depth, overriding temperature.
            batch_size (int): images per backend call (guidance runs 2x rows in the same call).
            image_indices (Optional[list[int]]): the image index of each image (default start + j).
            start (int): first image index, when image_indices is not given.

        Returns:
            list[PIL.Image.Image]: RGB images.
        """
        req = self.request(labels, num, **kwargs)
        return [im for part in req.batches() for im in self.decode(self._codes(part))]

    def _codes(self, req: Request) -> np.ndarray:
        h, w, depth = self.latent_shape
        n, guided = len(req.labels), req.params.guided
        rows = np.concatenate([req.labels, np.full(n, self.manifest.null_class)]) if guided else req.labels
        u = np.stack([image_uniforms(req.seed, int(i), h * w * depth) for i in req.indices]).reshape(n, h * w, depth)
        self.backend.reset(len(rows))
        hidden = self.cls_embedding[rows][:, None, :]  # [rows, 1, d] the condition token
        return decode_n_tokens(self.backend.stage_step, self.tok_embeddings, hidden, u, req.params).reshape(n, h, w, depth)

    def check_codes(self, codes) -> np.ndarray:
        """codes -> int64 [n, h, w, D] with every value in [0, vocab_size), or InvalidInputError."""
        arr = np.asarray(codes)
        if arr.dtype.kind not in "iu":
            raise InvalidInputError(f"codes must be an integer array, got dtype {arr.dtype}")
        if arr.ndim != 4 or arr.shape[1:] != self.latent_shape or arr.shape[0] < 1:
            raise InvalidInputError(f"codes must have shape [n >= 1, {', '.join(map(str, self.latent_shape))}] "
                                    f"(n, h, w, depth), got {list(arr.shape)}")
        if arr.min() < 0 or arr.max() >= self.vocab_size:
            raise InvalidInputError(f"codes must lie in [0, {self.vocab_size}), got values in [{arr.min()}, {arr.max()}]")
        return arr.astype(np.int64)

    def decode(self, codes, batch_size: int = 16) -> list:
        """Decode codes [n, h, w, D] (any integer dtype) into n RGB PIL images."""
        codes = self.check_codes(codes)
        batch_size = min(integer(batch_size, "batch_size", 1), self.backend.max_batch or batch_size)
        return [im for lo in range(0, len(codes), batch_size)
                for im in to_pil(self.backend.run("decoder", {"codes": codes[lo:lo + batch_size]})["image"])]
