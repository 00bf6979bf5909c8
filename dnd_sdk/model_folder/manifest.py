"""manifest.json of an exported model folder: schema, writing and validation (numpy/json only).

Public API:
    FORMAT, VERSION                 "dnd-model", 2 (version 1 folders are refused: re-export them)
    DIM_NAMES                       the symbolic dims a shape may use
    TensorSpec(name, dtype, shape)  dtype a numpy-style name ("float32", "float16", "bfloat16",
                                    "int64", "uint8"); shape entries are ints or DIM_NAMES
    FileEntry(file, sha256, bytes, inputs, outputs, external_data)
    Stage(graph, layers, head)
    Manifest                        the whole file; helpers: depth, stage_names, graph_path(name),
                                    file_path(name), inputs(name), outputs(name), past_names(layer),
                                    new_names(layer), graphs (GraphFacts: what backends judge), to_dict(),
                                    from_dict(d)
    write_manifest(model_dir, manifest) -> Manifest   fills sha256/bytes of every file, writes json
    load_manifest(model_dir, verify=True) -> Manifest validates fields and every file's sha256

The manifest states facts about its graphs, never which backends run them: each backend judges that itself
(`dnd_sdk.backends`). Folders written before that carry `forms` (graph form -> backend names), which is read
past: their dtypes say the same.
"""
import dataclasses
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..arguments import as_int
from ..errors import DndError, ManifestError
from ..folders import OwnFiles, atomic_write
from ..sampler import DEFAULTS
from .checks import problems
from .schema import (  # noqa: F401 (the schema's names are imported from here)
    DECODER_DTYPES, DIM_NAMES, DTYPES, KV_TEMPLATES, SAMPLER_KEYS, TENSOR_DTYPES)
from .graphs import GraphFacts
from .hashing import sha256_file
from .files import RERUN as _RERUN, inside, verify as verify_file, verify_graph

FORMAT, VERSION = "dnd-model", 2
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20  # a real one is a few kB
# every file dnd-export writes (a graph's external data beside it): `dnd-export --force` replaces a folder
# holding only these, never one where `dnd generate` or a person put files
EXPORTED_NAMES = r"manifest\.json|embeddings\.npz|(stage\d+|decoder)\.onnx(\.data)?"


def listed_intact(folder: Path, index: str, format_name: str) -> Optional[set]:
    """The names of the files that `folder/index` (a manifest.json or engines.json of `format_name`) lists and
    that are still as it lists them (size and sha256), with `index` itself; None when it is no such file."""
    path = folder / index
    if not path.is_file() or path.is_symlink():  # a FIFO would block the read, a link lead elsewhere
        return None
    try:
        d = read_json(path, MAX_MANIFEST_BYTES, "")
    except (DndError, OSError):
        return None
    if not isinstance(d, dict) or d.get("format") != format_name or not isinstance(d.get("files"), dict):
        return None
    entries = [e for e in d["files"].values() if isinstance(e, dict)]
    refs = entries + [r for e in entries if isinstance(e.get("external_data"), list) for r in e["external_data"]]
    return {index} | {r["file"] for r in refs if isinstance(r, dict) and _intact(folder, r)}


def _intact(folder: Path, ref: dict) -> bool:
    name = ref.get("file")
    if not isinstance(name, str) or not name or name.startswith("/") or ".." in name.split("/"):
        return False
    path = folder / name
    return (path.is_file() and not path.is_symlink() and path.stat().st_size == ref.get("bytes")
            and sha256_file(path) == ref.get("sha256"))


EXPORTED = OwnFiles("dnd-export", MANIFEST_NAME, EXPORTED_NAMES,
                    lambda folder: listed_intact(folder, MANIFEST_NAME, FORMAT))


@dataclass
class TensorSpec:
    name: str
    dtype: str
    shape: list  # ints or names from DIM_NAMES

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        spec = cls(str(d["name"]), str(d["dtype"]), list(d["shape"]))
        if spec.dtype not in TENSOR_DTYPES:
            raise ManifestError(f"tensor {spec.name!r} has dtype {spec.dtype!r}, expected one of {TENSOR_DTYPES}. {_RERUN}")
        bad = [s for s in spec.shape if not (isinstance(s, int) or s in DIM_NAMES)]
        if bad:
            raise ManifestError(f"tensor {spec.name!r} has unknown dims {bad}; dims are ints or {DIM_NAMES}. {_RERUN}")
        return spec


@dataclass
class FileRef:
    file: str
    sha256: str = ""
    bytes: int = 0

    @classmethod
    def from_dict(cls, d: dict, listed_in: str = "manifest.json", remedy: str = _RERUN) -> "FileRef":
        ref = cls(**d)
        if not (isinstance(ref.file, str) and isinstance(ref.sha256, str) and as_int(ref.bytes) is not None):
            raise ManifestError(f"{listed_in} lists {d!r}: a file needs a name, a sha256 string and a size in "
                                f"bytes. {remedy}")
        return ref


@dataclass
class FileEntry:
    file: str
    sha256: str = ""
    bytes: int = 0
    inputs: Optional[list] = None   # list[TensorSpec] for graphs
    outputs: Optional[list] = None
    external_data: list = field(default_factory=list)  # list[FileRef] for graphs over 2 GB

    @classmethod
    def from_dict(cls, d: dict) -> "FileEntry":
        inputs, outputs = ([TensorSpec.from_dict(s) for s in d[key]] if d.get(key) is not None else None
                           for key in ("inputs", "outputs"))
        ref = FileRef.from_dict({k: d[k] for k in ("file", "sha256", "bytes") if k in d})
        return cls(ref.file, ref.sha256, ref.bytes, inputs, outputs,
                   [FileRef.from_dict(r) for r in d.get("external_data", [])])


@dataclass
class Stage:
    graph: str   # key into Manifest.files
    layers: list  # global layer indices whose KV cache this graph takes
    head: int


@dataclass
class Manifest:
    dtype: str
    opset: int
    model_config: dict
    tokenizer_config: dict
    labels: list
    latent: dict   # {h, w, depth}
    image: dict    # {height, width}
    null_class: Optional[int]
    sampler_defaults: dict
    stages: list   # list[Stage]
    files: dict    # name -> FileEntry; names stage0..stage{D-1}, decoder, embeddings
    cache_length: int  # L, the slots of every fixed KV cache tensor [rows, kv_heads, L, head_dim]
    decoder_dtype: str = ""  # fp32, fp16 or int8; "" in folders written before it was recorded (the export's)
    # graph form -> facts of its integer kernels (op, and for int8 weights `pair_limit`); {} for float graphs
    # and for folders written before it was recorded
    quantization: dict = field(default_factory=dict)
    producer: dict = field(default_factory=dict)
    kv: dict = field(default_factory=lambda: dict(KV_TEMPLATES))
    format: str = FORMAT
    version: int = VERSION
    model_dir: Optional[Path] = field(default=None, compare=False)  # set by load/write, not stored

    @property
    def depth(self) -> int:
        return int(self.latent["depth"])

    @staticmethod
    def stage_graph(k: int) -> str:
        """The name of stage k's graph (its file entry and its file's stem)."""
        return f"stage{k}"

    @property
    def stage_names(self) -> list:
        return [s.graph for s in self.stages]

    def file_path(self, name: str) -> Path:
        if name not in self.files:
            raise ManifestError(f"manifest.json has no file entry {name!r} (has {sorted(self.files)}). {_RERUN}")
        return inside(self.model_dir or ".", self.files[name].file)

    graph_path = file_path

    def inputs(self, name: str) -> list:
        return list(self.files[name].inputs or [])

    def outputs(self, name: str) -> list:
        return list(self.files[name].outputs or [])

    def past_names(self, layer: int) -> tuple:
        return self.kv["past_key"] % layer, self.kv["past_value"] % layer

    def new_names(self, layer: int) -> tuple:
        return self.kv["new_key"] % layer, self.kv["new_value"] % layer

    @property
    def graphs(self) -> GraphFacts:
        """What the graphs are made of: what each backend's `supports` judges."""
        return GraphFacts(self.dtype, self.decoder_dtype, self.quantization)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("model_dir")
        for entry in d["files"].values():  # drop empty optional fields so the json reads cleanly
            for key in ("inputs", "outputs", "external_data"):
                if not entry[key]:
                    entry.pop(key)
        return {"format": d.pop("format"), "version": d.pop("version"), **d}

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ManifestError(f"manifest format is {got!r}, expected {FORMAT!r}: not an exported dnd model folder")
        if d.get("version") != VERSION:
            # version 1 stage graphs grew their cache by concatenation; no backend runs them any more
            raise ManifestError(f"manifest version {d.get('version')!r} is not supported (this build reads {VERSION}). {_RERUN}")
        names = [f.name for f in dataclasses.fields(cls) if f.name != "model_dir"]
        required = [n for n in names if n not in ("producer", "kv", "decoder_dtype", "quantization")]
        missing = [n for n in required if n not in d]
        if missing:
            raise ManifestError(f"manifest.json is missing required field(s) {missing}. {_RERUN}")
        try:
            m = cls(**{n: d[n] for n in names if n in d})
            m.stages = [Stage(str(s["graph"]), list(s["layers"]), s["head"]) for s in d["stages"]]
            m.files = {str(k): FileEntry.from_dict(v) for k, v in d["files"].items()}
            m.sampler_defaults = _filled(m.sampler_defaults)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ManifestError(f"manifest.json is malformed ({type(e).__name__}: {e}). {_RERUN}") from None
        m._validate()
        return m

    def _validate(self) -> None:
        found = problems(self)
        if found:
            raise ManifestError("manifest.json is invalid: " + "; ".join(found) + f". {_RERUN}")


def _filled(sampler_defaults: Any) -> Any:
    """A folder written before a sampler setting existed lacks its entry: the setting's default fills it, so the
    folder keeps loading. Anything else is left as it is, for the checks to judge (an unknown entry is refused)."""
    if not isinstance(sampler_defaults, dict):
        return sampler_defaults
    return {**DEFAULTS.stored(), **sampler_defaults}


def json_bytes(obj: Any) -> bytes:
    """The bytes of an index file: indented JSON and a final newline."""
    return (json.dumps(obj, indent=2) + "\n").encode()


def _refs(entry: FileEntry) -> list:
    return [entry, *entry.external_data]


def write_manifest(model_dir: str | Path, manifest: Manifest) -> Manifest:
    """Fill sha256 and bytes of every listed file from disk, then write model_dir/manifest.json."""
    model_dir = Path(model_dir)
    manifest = dataclasses.replace(manifest, model_dir=model_dir)
    manifest._validate()
    for entry in manifest.files.values():
        for ref in _refs(entry):
            path = inside(model_dir, ref.file)
            ref.sha256, ref.bytes = sha256_file(path), path.stat().st_size
    atomic_write(model_dir / MANIFEST_NAME, lambda f: f.write(json_bytes(manifest.to_dict())))
    return manifest


def load_manifest(model_dir: Union[str, Path], verify: bool = True) -> Manifest:
    """Read and validate model_dir/manifest.json; with verify, check size and sha256 of every file."""
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST_NAME
    if model_dir.is_file():
        kind = ("this is a checkpoint; export it with `dnd-export FILE -o DIR`" if zipfile.is_zipfile(model_dir)
                else "this is a file, not a model folder")
        raise ManifestError(f"{model_dir}: {kind}, then point at DIR.")
    if not path.is_file():
        raise ManifestError(f"{model_dir}: no {MANIFEST_NAME} here. Point at a folder written by "
                            "`dnd-export CHECKPOINT -o DIR`.")
    raw = read_json(path, MAX_MANIFEST_BYTES, _RERUN)
    manifest = Manifest.from_dict(raw)
    manifest.model_dir = model_dir
    if verify:
        for entry in manifest.files.values():
            if entry.inputs is not None:  # a graph: its external-data references are checked too
                verify_graph(model_dir, entry)
            else:
                verify_file(inside(model_dir, entry.file), entry)
    return manifest


def read_json(path: Path, max_bytes: int, remedy: str) -> Any:
    """Parse a small JSON file; oversized, malformed or absurdly nested content is a ManifestError."""
    if path.stat().st_size > max_bytes:
        raise ManifestError(f"{path}: {path.stat().st_size} bytes, far more than any {path.name} needs. {remedy}")
    try:
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ManifestError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:100]}). {remedy}") from None
