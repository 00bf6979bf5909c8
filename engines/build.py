"""`dnd-build`: TensorRT engines for every graph of an exported model folder.

    folder = build_engines("out/model", "out/engines", BuildConfig(max_batch=16))
    Generator(folder)                  # backend="auto" picks TensorRT on a GPU machine

The engine folder is a copy of the exported folder plus engines/{stage0..,decoder}.plan and
engines.json, written under a temporary name and moved into place when every engine is
built. Networks are strongly typed: each engine keeps the precision the graphs were
exported in (`dnd-export --dtype`), as TensorRT 10 prefers to builder precision flags and
TensorRT 11 requires (its 10.x-to-11.x migration guide: weak typing is removed).
"""
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from dnd_sdk.engine_index import BUILT, EngineIndex, tensorrt_major, write_engine_index
from dnd_sdk.errors import BackendUnavailableError, DndError, InvalidInputError
from dnd_sdk.folders import atomic_write, check_target, staged_folder, write_failure
from dnd_sdk.manifest import MANIFEST_NAME, FileRef, load_manifest
from .profiles import profile_shapes

log = logging.getLogger(__name__)


class EngineBuildError(DndError):
    """TensorRT could not parse a graph or build an engine."""


@dataclass
class BuildConfig:
    max_batch: int = 16  # images per call; with guidance each image takes 2 rows
    workspace_gib: float = 8.0  # TensorRT's scratch memory limit while choosing kernels
    optimization_level: int = 3  # TensorRT's builder_optimization_level (0..5): higher builds slower
    timing_cache: Optional[str] = None  # read if present and written back: rebuilds skip kernel timing


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailableError(
            f"dnd-build needs TensorRT ({e}). On a machine with an NVIDIA GPU: pip install 'dnd-sdk[gpu]'") from None
    tensorrt_major(trt.__version__)  # BackendUnavailableError outside TensorRT 10 and 11
    return trt


def network_flags(trt) -> int:
    """create_network flags: strong typing, opted into on TensorRT 10. TensorRT 11 types every network
    strongly and ignores the flag, which it deprecates (10.x-to-11.x migration guide), so none are set there."""
    if tensorrt_major(trt.__version__) == 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def _new_builder(trt, logger):
    # trt.Builder raises (pybind's "factory function returned nullptr") when TensorRT finds no usable
    # GPU or driver; the builder is the first object that needs one
    try:
        return trt.Builder(logger)
    except (TypeError, RuntimeError) as e:
        raise BackendUnavailableError(f"TensorRT {trt.__version__} could not start: no usable NVIDIA GPU or driver "
                                      f"here ({e}). Run dnd-build on the machine the engines are for.") from None


def build_engines(model_dir, out_dir, config: BuildConfig = BuildConfig(), force: bool = False) -> Path:
    """Build the engines of `model_dir` into a new folder `out_dir`; returns out_dir. Raises a DndError."""
    if config.max_batch < 1:
        raise InvalidInputError(f"max_batch must be >= 1, got {config.max_batch}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    manifest = load_manifest(model_dir)  # every file verified before hours of GPU time go into it
    check_target(out_dir, force, source=model_dir, ours=BUILT)
    if "tensorrt" not in manifest.backends:  # quantized stages and int8 decoders use ONNX Runtime's own operators
        raise InvalidInputError(f"{model_dir} holds graphs for {', '.join(manifest.backends)} only ({manifest.graph_kinds}); "
                                "export with --dtype fp32, fp16 or bf16 and a float --decoder-dtype for TensorRT")
    trt = _import_tensorrt()
    max_rows = config.max_batch * (2 if manifest.null_class is not None else 1)
    shapes = profile_shapes(manifest, max_rows)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = _new_builder(trt, logger)
    cache_path = Path(config.timing_cache) if config.timing_cache else None
    cache = builder.create_builder_config().create_timing_cache(
        cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    try:
        with staged_folder(out_dir, force, ours=BUILT) as tmp:
            _copy_model_folder(manifest, model_dir, tmp)
            (tmp / "engines").mkdir()
            files = {}
            for graph in shapes:
                log.info("building %s (rows up to %d)", graph, max_rows)
                plan = _build_engine(trt, builder, logger, manifest.graph_path(graph), manifest.dtype, shapes[graph],
                                     config, cache)
                files[graph] = FileRef(f"engines/{graph}.plan")
                (tmp / files[graph].file).write_bytes(plan)
            write_engine_index(tmp, EngineIndex(max_rows=max_rows, tensorrt_version=trt.__version__, files=files))
    except OSError as e:  # the export's own wording: what failed, that nothing is left, what to do
        raise EngineBuildError(write_failure(out_dir, e)) from e
    if cache_path:
        atomic_write(cache_path, lambda f: f.write(bytes(cache.serialize())))
    return out_dir


def _copy_model_folder(manifest, model_dir: Path, tmp: Path) -> None:
    """Every file the manifest lists, so that the engine folder also runs on the other backends."""
    names = [ref.file for entry in manifest.files.values() for ref in (entry, *entry.external_data)]
    for name in [MANIFEST_NAME, *names]:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_dir / name, tmp / name)  # contents only: modes follow the umask


def _build_engine(trt, builder, logger, onnx_path: Path, manifest_dtype: str, shapes: dict, config: BuildConfig,
                  cache) -> bytes:
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external data beside the file too
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT {trt.__version__} could not parse {onnx_path.name}: {errors}")
    build_config = builder.create_builder_config()
    build_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(config.workspace_gib * (1 << 30)))
    build_config.builder_optimization_level = config.optimization_level
    if manifest_dtype == "fp32":  # TF32 is on by default: it would round fp32 matmul inputs to 10 bits
        build_config.clear_flag(trt.BuilderFlag.TF32)
    if not build_config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("the timing cache comes from another GPU or TensorRT; it is not used for %s", onnx_path.name)
    build_config.add_optimization_profile(_profile(builder, network, shapes, onnx_path.name))
    plan = builder.build_serialized_network(network, build_config)
    if plan is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} could not build an engine for {onnx_path.name}; "
                               "its log above says why (often too little --workspace-gib)")
    return bytes(plan)


def _profile(builder, network, shapes: dict, graph: str):
    """The optimization profile of `shapes`; EngineBuildError when it does not fit the parsed network."""
    inputs = sorted(network.get_input(i).name for i in range(network.num_inputs))
    if inputs != sorted(shapes):
        raise EngineBuildError(f"{graph} has the inputs {inputs} but its manifest lists {sorted(shapes)}; "
                               "re-export the folder with dnd-export")
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        try:  # TensorRT raises RuntimeError on shapes that contradict each other or the network
            profile.set_shape(name, lo, opt, hi)
        except RuntimeError as e:
            raise EngineBuildError(f"{graph}: TensorRT refused the shapes of {name!r} (min {lo}, opt {opt}, max {hi}): "
                                   f"{e}. The manifest does not match the graph; re-export the folder") from None
    return profile
