"""`dnd bench`: both sides run on the same model in the same process and the JSON carries their ratio."""
import json

import pytest
import torch
from click.testing import CliRunner

from dnd_sdk.cli.main import cli


def test_bench_writes_json_with_a_ratio_per_batch_size(tiny_checkpoint, tiny_model_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", "--checkpoint", str(tiny_checkpoint), "--model", str(tiny_model_dir),
                                      "--batch", "1", "--batch", "2", "--num-batches", "1", "--repeats", "1",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["backend"] == "onnxruntime-cpu" and [r["batch_size"] for r in report["results"]] == [1, 2]
    assert report["reference"] == "PyTorch on cpu"  # what every ratio is compared against
    for row in report["results"]:
        assert row["runtime_images_per_s"] > 0 and row["reference_images_per_s"] > 0
        assert abs(row["ratio"] - row["runtime_images_per_s"] / row["reference_images_per_s"]) < 0.02 * row["ratio"] + 0.01


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA")
def test_bench_refuses_a_cuda_reference_without_cuda(tiny_checkpoint, tiny_model_dir):
    result = CliRunner().invoke(cli, ["bench", "--checkpoint", str(tiny_checkpoint), "--model", str(tiny_model_dir),
                                      "--reference-device", "cuda"])
    assert result.exit_code == 1 and "--reference-device cuda needs a GPU" in result.output
