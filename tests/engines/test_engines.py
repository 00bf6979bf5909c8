"""The TensorRT path's parts that need no GPU: profile shapes, the engine index, refusals, version and parity checks."""
import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dnd_engines.cli import main as dnd_build
from dnd_engines.profiles import profile_shapes
from dnd_sdk import Generator
from dnd_sdk.cli.main import cli
from dnd_sdk.errors import BackendUnavailableError, ManifestError
from dnd_sdk.model_folder.engine_index import (
    EngineIndex,
    load_engine_index,
    read_plan,
    tensorrt_major,
    write_engine_index,
)
from dnd_sdk.model_folder.manifest import FileRef, load_manifest

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def test_profiles_fix_every_dim_but_rows(tiny_model_dir):
    shapes = profile_shapes(load_manifest(tiny_model_dir), max_rows=6)
    # tiny: grid 2x4 (cache of 8 slots), dim 32, 2 kv heads of head_dim 8, depth 2
    assert sorted(shapes) == ["decoder", "stage0", "stage1"]
    assert shapes["stage0"]["hidden"] == ((1, 1, 32), (6, 1, 32), (6, 1, 32))
    assert shapes["stage0"]["positions"] == ((1,), (6,), (6,))
    assert shapes["stage1"]["kv_mask"] == ((1, 8), (6, 8), (6, 8))
    assert shapes["stage1"]["past_key_values.2.value"] == ((1, 2, 8, 8), (6, 2, 8, 8), (6, 2, 8, 8))
    assert shapes["decoder"]["codes"] == ((1, 2, 4, 2), (6, 2, 4, 2), (6, 2, 4, 2))


def _built_folder(model_dir, tmp_path):
    folder = tmp_path / "engines"
    shutil.copytree(model_dir, folder)
    (folder / "engines").mkdir()
    files = {}
    for i, graph in enumerate(["stage0", "stage1", "decoder"]):
        (folder / "engines" / f"{graph}.plan").write_bytes(bytes([i]) * 100)
        files[graph] = FileRef(f"engines/{graph}.plan")
    write_engine_index(folder, EngineIndex(max_rows=8, tensorrt_version="10.9.0", files=files))
    return folder


def test_engine_index_round_trip_and_tampering(tiny_model_dir, tmp_path):
    assert load_engine_index(tiny_model_dir) is None  # a plain export holds no engines
    folder = _built_folder(tiny_model_dir, tmp_path)
    index = load_engine_index(folder, ["stage0", "stage1", "decoder"])
    assert index.max_rows == 8 and index.files["decoder"].bytes == 100
    info = CliRunner().invoke(cli, ["info", str(folder)])
    assert info.exit_code == 0 and "engines:  TensorRT 10.9.0, up to 8 rows per call" in info.output
    with pytest.raises(ManifestError, match="no engine for"):
        load_engine_index(folder, ["stage0", "stage7"])
    assert read_plan(folder, index, "stage1") == bytes([1]) * 100  # what TensorRT deserializes
    (folder / "engines" / "stage1.plan").write_bytes(b"x" * 100)
    with pytest.raises(ManifestError, match="stage1.plan: contents do not match engines.json"):
        load_engine_index(folder)
    with pytest.raises(ManifestError, match="stage1.plan: contents do not match engines.json"):
        read_plan(folder, load_engine_index(folder, verify=False), "stage1")
    # the ONNX backends still run the folder
    with Generator(folder, backend="onnxruntime-cpu", threads=1) as gen:
        assert gen.sample_codes(num=2).shape == (2, 2, 4, 2)


@pytest.mark.parametrize("change, fragment", [
    ({"max_rows": "lots"}, r"max_rows must be an int in 1..65536, got 'lots'"),
    ({"max_rows": 0}, "max_rows must be an int"),
    ({"max_rows": True}, "max_rows must be an int"),
    ({"tensorrt_version": ["x"]}, r"tensorrt_version must be a version string, got \['x'\]"),
    ({"files": {"stage0": {"file": "engines/stage0.plan\0", "sha256": "0", "bytes": 100}}},
     r"engines.json names 'engines/stage0.plan\\x00': .*no NUL byte"),
    ({"files": {"stage0": {"file": "engines/stage0.plan", "sha256": 1, "bytes": 100}}}, "a file needs a name"),
])
def test_engine_index_values_are_checked(tiny_model_dir, tmp_path, change, fragment):
    folder = _built_folder(tiny_model_dir, tmp_path)
    raw = json.loads((folder / "engines.json").read_text())
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if key == "files" else value
    (folder / "engines.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=fragment):
        load_engine_index(folder)
    result = CliRunner().invoke(cli, ["info", str(folder)])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "Rebuild them" in result.output, result.output


def test_build_refuses_a_non_empty_target_and_the_folders_holding_the_model(tiny_model_dir, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("keep me")
    result = CliRunner().invoke(dnd_build, [str(tiny_model_dir), "-o", str(tmp_path / "taken")])
    assert result.exit_code == 1 and "exists and is not empty" in result.output
    assert (tmp_path / "taken" / "file").read_text() == "keep me"
    model = shutil.copytree(tiny_model_dir, tmp_path / "run" / "model")
    for out in (model, model.parent):
        result = CliRunner().invoke(dnd_build, [str(model), "-o", str(out), "--force"])
        assert result.exit_code == 1 and result.output == (
            f"Error: {out} holds the input {model}: replacing it would delete the input; choose another --out\n")
    assert load_manifest(model).depth == 2
    result = CliRunner().invoke(dnd_build, [str(tiny_model_dir), "-o", str(tmp_path / "e"), "--max-batch", "0"])
    assert result.exit_code == 1 and "max_batch must be >= 1" in result.output


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_build_without_tensorrt_says_how_to_get_it_and_writes_nothing(tiny_model_dir, tmp_path):
    result = CliRunner().invoke(dnd_build, [str(tiny_model_dir), "-o", str(tmp_path / "out" / "engines")])
    assert result.exit_code == 1 and "dnd-build needs TensorRT" in result.output and "dnd-sdk[gpu]" in result.output
    assert not (tmp_path / "out").exists()


def test_tensorrt_versions_are_told_apart_by_major_number():
    assert tensorrt_major("10.16.1.11") == 10 and tensorrt_major("11.1.0") == 11
    for version in ("8.6.1", "12.0.0", "nightly"):
        with pytest.raises(BackendUnavailableError, match=f"TensorRT {version} is not supported.*10 and 11 API"):
            tensorrt_major(version)


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_tensorrt_backend_without_tensorrt_says_how_to_get_it(tiny_model_dir, tmp_path):
    folder = _built_folder(tiny_model_dir, tmp_path)
    with pytest.raises(BackendUnavailableError, match=r"tensorrt: TensorRT is not installed .*dnd-sdk\[gpu\]"):
        Generator(folder, backend="tensorrt")
    with Generator(folder, threads=1) as gen:  # auto falls through to ONNX Runtime
        assert gen.backend_name == "onnxruntime-cpu"


@pytest.mark.skipif(importlib.util.find_spec("cuda") is not None, reason="cuda-python is installed here")
def test_cuda_runtime_without_cuda_python_names_the_package():
    with pytest.raises(ImportError, match=r"GPU backends need cuda-python >= 12.6.1 .*dnd-sdk\[gpu\]"):
        importlib.import_module("dnd_sdk.backends.cuda_runtime")


@pytest.mark.skipif(importlib.util.find_spec("cuda") is not None, reason="cuda-python is installed here")
def test_onnxruntime_cuda_without_cuda_python_is_unavailable_and_says_what_to_install():
    from dnd_sdk.backends.onnxrt import OnnxrtBackend
    backend = OnnxrtBackend.__new__(OnnxrtBackend)  # past the provider check, which fails first on a CPU build
    backend.cache = backend.stream = None
    with pytest.raises(BackendUnavailableError, match=r"keeps the KV cache on the GPU .*dnd-sdk\[gpu\]"):
        backend._open_device()


def test_gpu_parity_script_judges_a_backend_against_onnxruntime_cpu(tiny_model_dir, tmp_path):
    # the same folder on the same backend: every difference is zero and every limit holds
    out = tmp_path / "parity.jsonl"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "gpu_parity.py"), str(tiny_model_dir), str(tiny_model_dir),
                           "onnxruntime-cpu", "fp32", "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ("onnxruntime-cpu fp32 vs onnxruntime-cpu: ok (stage0 logits max abs 0 <= 0.001; "
                                   "greedy token agreement 1 >= 0.99; decoder pixels max abs 0 <= 1)")
    row = json.loads(out.read_text())
    assert row["passed"] and row["defaults_identical_images"] == 1.0
    proc = subprocess.run([sys.executable, str(SCRIPTS / "gpu_parity.py"), str(tiny_model_dir), str(tmp_path),
                           "tensorrt", "fp16"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout.startswith("tensorrt fp16 vs onnxruntime-cpu: FAILED: ")


def test_gpu_cache_traffic_script_tells_a_cache_copied_per_call(tiny_model_dir):
    spec = importlib.util.spec_from_file_location("gpu_cache_traffic", SCRIPTS / "gpu_cache_traffic.py")
    traffic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(traffic)
    measured = {"rows": 64, "call_ms_1_row": 1.0, "stage0_cache_bytes": 12_000_000, "cache_copy_ms": 2.0,
                "moved_bytes_1_row": [6665, 4096], "step_bytes_1_row": [6665, 4096],
                "moved_bytes_64_rows": [64 * 6665, 64 * 4096], "step_bytes_64_rows": [64 * 6665, 64 * 4096]}
    failed, summary = traffic.verdict({**measured, "call_ms_64_rows": 1.3})
    assert not failed and summary == ("stage 0: 1.000 ms at 1 row, 1.300 ms at 64 rows; copying its cache (12.0 MB) "
                                      "once takes 2.000 ms")
    failed, _ = traffic.verdict({**measured, "call_ms_64_rows": 3.1})  # as if the cache crossed with each call
    assert failed == ["64 rows cost 2.100 ms more than 1, at least half a copy of the cache"]
    failed, _ = traffic.verdict({**measured, "call_ms_64_rows": 1.3, "moved_bytes_64_rows": [10**8, 64 * 4096]})
    assert len(failed) == 1 and failed[0].startswith("copied [100000000, 262144] bytes (to device, to host) per call "
                                                     "at 64 rows, the step tensors are [426560, 262144]")
    import onnxruntime
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():  # here it can only say why not
        proc = subprocess.run([sys.executable, str(SCRIPTS / "gpu_cache_traffic.py"), str(tiny_model_dir),
                               "onnxruntime-cuda"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and proc.stdout.startswith("onnxruntime-cuda: FAILED: no backend can run"), \
            proc.stdout + proc.stderr
