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
import hashlib
import io
import os
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from .errors import ManifestError
from .onnx_refs import WireFormatError, onnx_external_files

RERUN = "Re-export the model with `dnd-export CHECKPOINT -o DIR --force`."
EMBEDDING_DTYPES = ("float32", "float16", "uint16")  # uint16: bfloat16 bit patterns
_CHUNK = 1 << 20


def inside(folder, name, listed_in: str = "manifest.json", remedy: str = RERUN) -> Path:
    """folder/name, refused unless `name` is a relative path to a regular file that stays in `folder`
    (no absolute path, no `..`, no link leading out). Nothing outside is touched before the refusal."""
    folder = Path(folder)
    parts = PurePosixPath(name).parts if isinstance(name, str) else ()
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name:
        raise ManifestError(f"{listed_in} names {name!r}: a model folder may only list files inside itself "
                            f"(relative paths, no '..'). {remedy}")
    root, real = os.path.realpath(folder), os.path.realpath(folder / name)
    if os.path.commonpath([root, real]) != root:
        raise ManifestError(f"{listed_in} names {name!r}, a link that leads out of {folder}: a model folder may "
                            f"only list files inside itself. {remedy}")
    if not os.path.isfile(real):
        raise ManifestError(f"{name}: listed in {listed_in} but missing from {folder} (or not a file). {remedy}")
    return Path(real)


def _hash_handle(f, path: Path, ref, listed_in: str, remedy: str, keep: bool):
    """sha256 of an open file checked against ref; returns (fstat, bytes if keep)."""
    st = os.fstat(f.fileno())
    if st.st_size != ref.bytes:
        raise ManifestError(f"{path.name}: {st.st_size} bytes, but {listed_in} says {ref.bytes}; the file was "
                            f"modified or truncated. {remedy}")
    digest, kept = hashlib.sha256(), []
    for chunk in iter(lambda: f.read(_CHUNK), b""):
        digest.update(chunk)
        if keep:
            kept.append(chunk)
    if digest.hexdigest() != ref.sha256:
        raise ManifestError(f"{path.name}: contents do not match {listed_in} (sha256 differs); the file was "
                            f"modified. {remedy}")
    return st, b"".join(kept) if keep else None


def verify(path: Path, ref, listed_in: str = "manifest.json", remedy: str = RERUN) -> os.stat_result:
    """Check size and sha256 through one open handle; returns its stat for `unchanged`."""
    with open(path, "rb") as f:
        return _hash_handle(f, path, ref, listed_in, remedy, keep=False)[0]


def read_verified(path: Path, ref, listed_in: str = "manifest.json", remedy: str = RERUN) -> bytes:
    """The file's bytes, read once and checked against ref's size and sha256."""
    with open(path, "rb") as f:
        return _hash_handle(f, path, ref, listed_in, remedy, keep=True)[1]


def unchanged(path: Path, st: os.stat_result) -> bool:
    now = os.stat(path)
    return (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def load_embeddings(manifest) -> tuple:
    """(tok_embeddings [V, d], cls_embedding [num_classes (+1 null), d]) from the verified embeddings.npz."""
    path = manifest.file_path("embeddings")
    data = read_verified(path, manifest.files["embeddings"])
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            tables = {key: npz[key] for key in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:  # object arrays land here too
        raise ManifestError(f"{path.name}: not a readable npz of plain arrays ({e}). {RERUN}") from None
    vocab, dim = int(manifest.model_config["vocab_size"]), int(manifest.model_config["dim"])
    rows = len(manifest.labels) + (manifest.null_class is not None)
    expected = {"tok_embeddings": (vocab, dim), "cls_embedding": (rows, dim)}
    problems = [] if set(tables) == set(expected) else [f"keys {sorted(tables)}, expected {sorted(expected)}"]
    for key, shape in expected.items():
        table = tables.get(key)
        if table is not None and (table.shape != shape or table.dtype.name not in EMBEDDING_DTYPES):
            problems.append(f"{key} is {table.dtype.name} {list(table.shape)}, expected {list(shape)} "
                            f"in one of {EMBEDDING_DTYPES}")
    if problems:
        raise ManifestError(f"{path.name} does not match manifest.json: {'; '.join(problems)}. {RERUN}")
    return tables["tok_embeddings"], tables["cls_embedding"]


def verify_graph(folder, entry) -> tuple:
    """(the graph's verified bytes, {external-data path: its stat}) after checking that every
    external-data file the graph reads is listed in `entry` and matches its sha256."""
    path = inside(folder, entry.file)
    model = read_verified(path, entry)
    try:
        reads = onnx_external_files(model)
    except WireFormatError as e:
        raise ManifestError(f"{path.name}: not a valid ONNX file ({e}). {RERUN}") from None
    unlisted = sorted(reads - {ref.file for ref in entry.external_data})
    if unlisted:
        raise ManifestError(f"{path.name} reads external data {unlisted} that manifest.json does not list for it, "
                            f"so its contents are unchecked; refusing to load it. {RERUN}")
    held = {}
    for ref in entry.external_data:
        data_path = inside(folder, ref.file)
        held[data_path] = verify(data_path, ref)
    return model, held


def graph_session(manifest, name: str, open_session):
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
