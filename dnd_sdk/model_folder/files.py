"""A model folder is a boundary: it names only its own files, and every byte read is hashed first.

    path = inside(folder, "stage0.onnx")       # a plain file in the folder, or ManifestError
    stat = verify(path, ref)                    # size and sha256 checked through one open handle
    data = read_verified(path, ref)             # the same, returning the bytes that were hashed
    tok, cls = load_embeddings(manifest)        # embeddings.npz, shapes and dtypes checked
    session = graph_session(manifest, "stage0", open_session)

A graph is handed to ONNX Runtime as the bytes that were hashed, so nothing can swap the file
between the check and the load. External data (weights past 2 GB) is too big to hold twice: it
is hashed through an open handle, and its inode, size and mtime must be unchanged once ONNX
Runtime has read it.
"""
import io
import math
import os
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..errors import ManifestError
from .hashing import sha256_bytes, sha256_stream
from .onnx_refs import WireFormatError, onnx_external_files

RERUN = "Re-export the model with `dnd-export CHECKPOINT -o DIR --force`."
EMBEDDING_DTYPES = ("float32", "float16", "uint16")  # uint16: bfloat16 bit patterns
MAX_GRAPH_BYTES = (1 << 31) - 1  # protobuf's limit on one message: a bigger .onnx cannot be parsed


def inside(folder: str | Path, name: Any, listed_in: str = "manifest.json", remedy: str = RERUN) -> Path:
    """folder/name, refused unless `name` is a relative path to a regular file that stays in `folder`
    (no absolute path, no `..`, no link leading out). Nothing outside is touched before the refusal."""
    folder = Path(folder)
    parts = PurePosixPath(name).parts if isinstance(name, str) else ()
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name or "\0" in name:
        raise ManifestError(f"{listed_in} names {name!r}: a model folder may only list files inside itself "
                            f"(relative paths, no '..', no NUL byte). {remedy}")
    root, real = os.path.realpath(folder), os.path.realpath(folder / name)
    if os.path.commonpath([root, real]) != root:
        raise ManifestError(f"{listed_in} names {name!r}, a link that leads out of {folder}: a model folder may "
                            f"only list files inside itself. {remedy}")
    if not os.path.isfile(real):
        raise ManifestError(f"{name}: listed in {listed_in} but missing from {folder} (or not a file). {remedy}")
    return Path(real)


def _check_size(size: int, path: Path, ref: Any, listed_in: str, remedy: str) -> None:
    if size != ref.bytes:
        raise ManifestError(f"{path.name}: {size} bytes, but {listed_in} says {ref.bytes}; the file was "
                            f"modified or truncated. {remedy}")


def _check_digest(digest: str, path: Path, ref: Any, listed_in: str, remedy: str) -> None:
    if digest != ref.sha256:
        raise ManifestError(f"{path.name}: contents do not match {listed_in} (sha256 differs); the file was "
                            f"modified. {remedy}")


def verify(path: Path, ref: Any, listed_in: str = "manifest.json", remedy: str = RERUN) -> os.stat_result:
    """Check size and sha256 through one open handle; returns its stat for `unchanged`."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        _check_size(st.st_size, path, ref, listed_in, remedy)
        digest = sha256_stream(f)
    _check_digest(digest, path, ref, listed_in, remedy)
    return st


def read_verified(path: Path, ref: Any, listed_in: str = "manifest.json", remedy: str = RERUN) -> bytes:
    """The file's bytes, read once and checked against ref's size and sha256. One read of the known size
    fills a single bytes object (no chunks joined afterwards), so the peak is the file's size; being
    immutable, the object that was hashed is the one the caller hands on."""
    with open(path, "rb") as f:
        _check_size(os.fstat(f.fileno()).st_size, path, ref, listed_in, remedy)
        data = f.read(ref.bytes)
    _check_size(len(data), path, ref, listed_in, remedy)  # truncated since the stat
    _check_digest(sha256_bytes(data), path, ref, listed_in, remedy)
    return data


def unchanged(path: Path, st: os.stat_result) -> bool:
    now = os.stat(path)
    return (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def load_embeddings(manifest: Any) -> tuple:
    """(tok_embeddings [V, d], cls_embedding [num_classes (+1 null), d]) from the verified embeddings.npz.
    Each member's .npy header is checked against the model's shapes before its data is inflated, and its
    uncompressed size must be what that header implies: neither a huge declared shape nor a zip bomb can
    make the loader allocate more than the model's own tables."""
    path = manifest.file_path("embeddings")
    data = read_verified(path, manifest.files["embeddings"])
    vocab, dim = int(manifest.model_config["vocab_size"]), int(manifest.model_config["dim"])
    rows = len(manifest.labels) + (manifest.null_class is not None)
    expected = {"tok_embeddings": (vocab, dim), "cls_embedding": (rows, dim)}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as npz:
            members = {name.removesuffix(".npy"): npz.getinfo(name) for name in npz.namelist()}
            if set(members) != set(expected):
                raise ManifestError(f"{path.name} does not match manifest.json: keys {sorted(members)}, expected "
                                    f"{sorted(expected)}. {RERUN}")
            tables = tuple(_member_array(npz, members[key], key, shape, path) for key, shape in expected.items())
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise ManifestError(f"{path.name}: not a readable npz of plain arrays ({e}). {RERUN}") from None
    for key, table in zip(expected, tables):
        _check_finite(table, key, path)
    return tables


def _check_finite(table: np.ndarray, key: str, path: Path) -> None:
    """A NaN or inf row would turn every image that embeds it into NaN logits: blank images, no error."""
    if table.dtype == np.uint16:  # bf16 bit patterns: all exponent bits set is inf or NaN
        bad = (table & 0x7F80) == 0x7F80
    else:
        bad = ~np.isfinite(table)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ManifestError(f"{path.name}: {key} holds NaN or infinite values (row {row} first), so the model "
                            f"would sample blank images; the export overflowed or the file was damaged. {RERUN}")


def _member_array(npz: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, shape: tuple, path: Path) -> np.ndarray:
    """One array of an npz, read only once its header and size say it is the table the model needs."""
    with npz.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"{key}: .npy format {version} is not one numpy writes for plain arrays")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        header_shape, fortran_order, dtype = read_header(f)
        if header_shape != shape or dtype.name not in EMBEDDING_DTYPES:
            raise ManifestError(f"{path.name} does not match manifest.json: {key} is {dtype.name} "
                                f"{list(header_shape)}, expected {list(shape)} in one of {EMBEDDING_DTYPES}. {RERUN}")
        size = f.tell() + math.prod(shape) * dtype.itemsize
        if info.file_size != size:  # zipfile stops inflating at file_size, so this bounds what is read
            raise ManifestError(f"{path.name}: {key} unpacks to {info.file_size} bytes, but its header implies "
                                f"{size}. {RERUN}")
        table = np.frombuffer(f.read(size - f.tell()), dtype)
    return table.reshape(shape, order="F" if fortran_order else "C")


def verify_graph(folder: str | Path, entry: Any) -> tuple:
    """(the graph's verified bytes, {external-data path: its stat}) after checking that every
    external-data file the graph reads is listed in `entry` and matches its sha256."""
    path = inside(folder, entry.file)
    data_paths = [inside(folder, ref.file) for ref in entry.external_data]  # every name refused or accepted first
    if entry.bytes > MAX_GRAPH_BYTES:  # refused before reading: no ONNX Runtime could parse it
        raise ManifestError(f"{path.name}: {entry.bytes} bytes, over the 2 GiB a protobuf can hold (weights that "
                            f"large belong in external data, which the export writes on its own). {RERUN}")
    model = read_verified(path, entry)
    try:
        reads = onnx_external_files(model)
    except WireFormatError as e:
        raise ManifestError(f"{path.name}: not a valid ONNX file ({e}). {RERUN}") from None
    unlisted = sorted(reads - {ref.file for ref in entry.external_data})
    if unlisted:
        raise ManifestError(f"{path.name} reads external data {unlisted} that manifest.json does not list for it, "
                            f"so its contents are unchecked; refusing to load it. {RERUN}")
    return model, {data_path: verify(data_path, ref) for data_path, ref in zip(data_paths, entry.external_data)}


def graph_session(manifest: Any, name: str, open_session: Callable[[bytes, Path], Any]) -> Any:
    """open_session(model_bytes, folder) on the verified bytes of graph `name` (see verify_graph); its
    external data must be the files that were hashed, unchanged."""
    folder = Path(manifest.model_dir)
    model, held = verify_graph(folder, manifest.files[name])
    session = open_session(model, folder)
    changed = [p.name for p, st in held.items() if not unchanged(p, st)]
    if changed:
        raise ManifestError(f"{changed} changed while {manifest.files[name].file} was loading; load the model again "
                            "once nothing writes to its folder.")
    return session
