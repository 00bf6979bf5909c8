"""engines.json: the TensorRT engines `dnd-build` adds to a copy of an exported model folder.

    index = load_engine_index(folder)      # None when the folder holds no engines
    index.max_rows, index.files["stage0"]  # FileRef(file="engines/stage0.plan", sha256, bytes)

A built folder is the exported folder plus `engines/*.plan` and this index, so every other
backend can still run it.
"""
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..arguments import as_int
from ..errors import BackendUnavailableError, ManifestError
from ..folders import OwnFiles, atomic_write
from .files import inside, read_verified, verify as verify_file
from .manifest import (
    EXPORTED_NAMES,
    FORMAT as MODEL_FORMAT,
    MANIFEST_NAME,
    FileRef,
    json_bytes,
    listed_intact,
    read_json,
    sha256_file,
)

FORMAT, VERSION = "dnd-engines", 1
ENGINES_NAME = "engines.json"
_REBUILD = "Rebuild them with `dnd-build MODEL_DIR -o ENGINE_DIR`."
# the TensorRT major versions dnd-build and the TensorRT backend are written for (the gpu extras' pin)
TENSORRT_MAJORS = (10, 11)
MAX_ROWS = 1 << 16  # rows per engine call: far beyond any GPU's memory for the cache they need


def _built(folder: Path) -> Optional[set]:
    """What dnd-build wrote there, intact: the exported files its manifest lists and the plans engines.json lists."""
    exported, engines = listed_intact(folder, MANIFEST_NAME, MODEL_FORMAT), listed_intact(folder, ENGINES_NAME, FORMAT)
    return None if exported is None or engines is None else exported | engines


# every file dnd-build writes: the exported folder's copy, the engines and this index (see OwnFiles)
BUILT = OwnFiles("dnd-build", ENGINES_NAME, rf"{EXPORTED_NAMES}|engines\.json|engines/(stage\d+|decoder)\.plan",
                 _built)


def tensorrt_major(version: str) -> int:
    """The major version of a TensorRT version string ("10.16.1.11" -> 10); raises BackendUnavailableError
    outside TENSORRT_MAJORS. By number rather than by probing for an API: the probes move between versions
    (STRONGLY_TYPED, for one, is deprecated in 11 and ignored there)."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        major = None
    if major not in TENSORRT_MAJORS:
        raise BackendUnavailableError(
            f"TensorRT {version} is not supported: dnd-sdk follows the TensorRT {TENSORRT_MAJORS[0]} and "
            f"{TENSORRT_MAJORS[-1]} API. Install one of those: pip install 'dnd-sdk[gpu]' (README, 'GPU install')")
    return major


@dataclass
class EngineIndex:
    max_rows: int  # the most rows a stage or decoder call takes; guidance runs 2 rows per image
    tensorrt_version: str  # engines run only under this version, on the kind of GPU they were built on
    files: dict = field(default_factory=dict)  # graph name -> FileRef, every graph of the manifest
    format: str = FORMAT
    version: int = VERSION


def write_engine_index(folder: str | Path, index: EngineIndex) -> EngineIndex:
    """Fill sha256 and bytes of every plan from disk, then write folder/engines.json atomically."""
    folder = Path(folder)
    for ref in index.files.values():
        path = folder / ref.file
        ref.sha256, ref.bytes = sha256_file(path), path.stat().st_size
    atomic_write(folder / ENGINES_NAME, lambda f: f.write(json_bytes(dataclasses.asdict(index))))
    return index


def load_engine_index(folder: str | Path, graphs: Iterable[str] = (), verify: bool = True) -> Optional[EngineIndex]:
    """Read folder/engines.json (None if absent); check it lists every name in `graphs` and, with
    verify, each plan's size and sha256."""
    path = Path(folder) / ENGINES_NAME
    if not path.is_file():
        return None
    raw = read_json(path, 16 << 20, _REBUILD)
    try:
        if raw.get("format") != FORMAT or raw.get("version") != VERSION:
            raise ManifestError(f"{path}: not a {FORMAT} v{VERSION} index. {_REBUILD}")
        index = EngineIndex(**{**raw, "files": {k: FileRef.from_dict(v, ENGINES_NAME, _REBUILD)
                                                for k, v in raw["files"].items()}})
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ManifestError(f"{path}: malformed ({type(e).__name__}: {e}). {_REBUILD}") from None
    if as_int(index.max_rows, 1, MAX_ROWS) is None:
        raise ManifestError(f"{path}: max_rows must be an int in 1..{MAX_ROWS}, got {index.max_rows!r}. {_REBUILD}")
    if not (isinstance(index.tensorrt_version, str) and index.tensorrt_version):
        raise ManifestError(f"{path}: tensorrt_version must be a version string, got {index.tensorrt_version!r}. "
                            f"{_REBUILD}")
    missing = [g for g in graphs if g not in index.files]
    if missing:
        raise ManifestError(f"{path}: no engine for {missing}. {_REBUILD}")
    if verify:
        for ref in index.files.values():
            verify_file(inside(folder, ref.file, ENGINES_NAME, _REBUILD), ref, ENGINES_NAME, _REBUILD)
    return index


def read_plan(folder: str | Path, index: EngineIndex, graph: str) -> bytes:
    """The plan of `graph`, read once and checked against its size and sha256: TensorRT deserializes
    the very bytes that were hashed, so a file swapped after a check cannot slip in."""
    ref = index.files[graph]
    return read_verified(inside(folder, ref.file, ENGINES_NAME, _REBUILD), ref, ENGINES_NAME, _REBUILD)
