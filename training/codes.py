"""Code extraction: encode a dataset once so the transformer trains on small integer arrays.

    dnd train extract-codes --config configs/transformer-words.yaml     # writes codes.path

The npz holds `codes` uint16 [N, h, w, D], `labels` int64 [N], `label_names` str [C] and
`tokenizer_config` (a JSON string, checked against the tokenizer at training time). With
synthetic words and `variants` V, it encodes V rendered samples of every class: dataset
indices 0 .. C*V-1, so sample i is class i % C and rendering is deterministic.
"""
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dnd_sdk.errors import InvalidInputError
from dnd_sdk.folders import atomic_write
from .config import stored_config
from .data import DataConfig, build_dataset
from .tokenizer import TokenizerConfig
from .tokenizer_file import load_tokenizer


@dataclass
class CodesConfig:
    path: str = "runs/codes.npz"  # the npz written by extraction and read by transformer training
    tokenizer: str = "runs/tokenizer/tokenizer.pt"
    data: DataConfig = field(default_factory=DataConfig)
    variants: int = 1  # synthetic words: rendered samples per class
    batch_size: int = 64


@dataclass
class CodeSet:
    codes: np.ndarray  # uint16 [N, h, w, D]
    labels: np.ndarray  # int64 [N]
    label_names: list
    tokenizer_config: dict


@torch.no_grad()
def extract_codes(cfg: CodesConfig, device: str = "cpu", progress: bool = True) -> Path:
    tokenizer, _ = load_tokenizer(cfg.tokenizer)
    tokenizer.to(device)
    tc = tokenizer.config
    if (cfg.data.height, cfg.data.width) != (tc.image_height, tc.image_width):
        raise InvalidInputError(f"codes.data size {cfg.data.height}x{cfg.data.width} differs from the tokenizer's "
                                f"{tc.image_height}x{tc.image_width}; set codes.data.height/width to match")
    if cfg.data.kind != "words" and cfg.variants != 1:
        raise InvalidInputError("codes.variants > 1 needs synthetic words (data.kind=words); an image folder "
                                "is encoded once per file")
    if tc.codebook_size > 65536:
        raise InvalidInputError(f"codebook of {tc.codebook_size} entries does not fit the uint16 code file")
    dataset = build_dataset(cfg.data, length=None)
    if cfg.data.kind == "words":
        dataset.length = len(dataset.labels) * cfg.variants
    n = len(dataset)
    codes = np.empty((n, tc.grid_h, tc.grid_w, tc.depth), dtype=np.uint16)
    labels = np.empty(n, dtype=np.int64)
    for start in tqdm(range(0, n, cfg.batch_size), desc="encode", disable=not progress):
        items = [dataset[i] for i in range(start, min(n, start + cfg.batch_size))]
        images = torch.stack([x for x, _ in items]).to(device)
        codes[start:start + len(items)] = tokenizer.encode(images).cpu().numpy().astype(np.uint16)
        labels[start:start + len(items)] = [y for _, y in items]
    path = Path(cfg.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez_compressed(
        f, codes=codes, labels=labels, label_names=np.array(dataset.labels, dtype=str),
        tokenizer_config=np.array(json.dumps(dataclasses.asdict(tc)))))
    return path


def load_codes(path) -> CodeSet:
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"code file {path} does not exist; run `dnd train extract-codes` first "
                                "(or set codes.path)")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in ("codes", "labels", "label_names", "tokenizer_config")}
    except (KeyError, ValueError, OSError) as e:
        raise InvalidInputError(f"{path} is not a code file written by extract-codes: {e}") from None
    codes, labels, names = data["codes"], data["labels"], data["label_names"]
    if codes.ndim != 4 or labels.shape != codes.shape[:1] or codes.dtype.kind not in "iu" or labels.dtype.kind not in "iu":
        raise InvalidInputError(f"{path}: codes {codes.dtype} {list(codes.shape)} and labels {labels.dtype} "
                                f"{list(labels.shape)} are not integer arrays [N, h, w, D] / [N]; run extract-codes again")
    if names.ndim != 1 or names.dtype.kind != "U" or not len(names):
        raise InvalidInputError(f"{path}: label_names is {names.dtype} {list(names.shape)}, not a list of class names")
    try:
        config = json.loads(str(data["tokenizer_config"]))
    except (ValueError, RecursionError):
        config = None
    tc = stored_config(TokenizerConfig, config, "tokenizer_config", InvalidInputError, f"{path}: ")
    # an id past the embedding tables would fail deep inside the first training step
    for name, values, bound in (("codes", codes, tc.codebook_size), ("labels", labels, len(names))):
        if values.size and not (0 <= values.min() and values.max() < bound):
            raise InvalidInputError(f"{path}: {name} hold ids outside 0..{bound - 1}; run extract-codes again")
    return CodeSet(codes, labels.astype(np.int64), [str(s) for s in names], config)
