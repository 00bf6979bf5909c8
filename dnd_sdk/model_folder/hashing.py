"""sha256 as every index file records it (manifest.json, engines.json, run manifests): the one place
that decides how a file is read for its digest."""
import hashlib
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20  # bytes read at a time: a multi-GB weight file is never held whole


def sha256_stream(f: BinaryIO) -> str:
    """The hex digest of what is left to read in an open binary file."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: f.read(CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
