"""dnd-build's parts that need no GPU: profile shapes, the engine index, and its refusals."""
import importlib.util
import shutil

import pytest
from click.testing import CliRunner

from dnd_engines.cli import main as dnd_build
from dnd_engines.profiles import profile_shapes
from dnd_sdk import Generator
from dnd_sdk.cli.main import cli
from dnd_sdk.engines import EngineIndex, load_engine_index, write_engine_index
from dnd_sdk.errors import ManifestError
from dnd_sdk.manifest import FileRef, load_manifest

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


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
    (folder / "engines" / "stage1.plan").write_bytes(b"x" * 100)
    with pytest.raises(ManifestError, match="stage1.plan: contents do not match engines.json"):
        load_engine_index(folder)
    # the ONNX backends still run the folder
    with Generator(folder, backend="onnxruntime-cpu", threads=1) as gen:
        assert gen.sample_codes(num=2).shape == (2, 2, 4, 2)


def test_build_refuses_a_non_empty_target_and_the_model_folder(tiny_model_dir, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("keep me")
    result = CliRunner().invoke(dnd_build, [str(tiny_model_dir), "-o", str(tmp_path / "taken")])
    assert result.exit_code == 1 and "exists and is not empty" in result.output
    assert (tmp_path / "taken" / "file").read_text() == "keep me"
    result = CliRunner().invoke(dnd_build, [str(tiny_model_dir), "-o", str(tiny_model_dir), "--force"])
    assert result.exit_code == 1 and "must differ from the model folder" in result.output
    result = CliRunner().invoke(dnd_build, [str(tiny_model_dir), "-o", str(tmp_path / "e"), "--max-batch", "0"])
    assert result.exit_code == 1 and "max_batch must be >= 1" in result.output


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_build_without_tensorrt_says_how_to_get_it_and_writes_nothing(tiny_model_dir, tmp_path):
    result = CliRunner().invoke(dnd_build, [str(tiny_model_dir), "-o", str(tmp_path / "out" / "engines")])
    assert result.exit_code == 1 and "dnd-build needs TensorRT" in result.output and "dnd-sdk[gpu]" in result.output
    assert not (tmp_path / "out").exists()
