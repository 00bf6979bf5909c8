"""`dnd bench`: both sides run on the same model in the same process and the JSON carries their ratio."""
import json
import time

import pytest
import torch
from click.testing import CliRunner

from dnd_bench.bench import _rates, table
from dnd_bench.floor import NO_FLOOR, NO_FLOOR_REPORT
from dnd_sdk.cli.main import cli
from dnd_sdk.cpu import REPORTED_FLAGS, cpu_features


def test_bench_writes_json_with_a_ratio_per_batch_size(tiny_checkpoint, tiny_model_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", str(tiny_model_dir), "--checkpoint", str(tiny_checkpoint),
                                      "--batch-size", "1", "--batch", "2", "--num-batches", "1", "--repeats", "1",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    # the printed table: a header, then per batch size the images, both rates, their ratio and the floor
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["batch", "size"])
    assert lines[header].split()[-5:] == ["floor", "img/s", "of", "floor", "bound"]
    for line, row in zip(lines[header + 1:header + 3], report["results"]):
        assert line.split() == [str(row["batch_size"]), str(row["images"]), f"{row['runtime_images_per_s']:.2f}",
                                f"{row['reference_images_per_s']:.2f}", f"{row['ratio']:.2f}x",
                                f"{row['floor_images_per_s']:.2f}", f"{row['of_floor']:.2f}", row["bound"]]
    assert f"floor:     {report['streaming_gb_per_s']:.2f} GB/s weight streaming" in result.stdout
    assert f"reference: PyTorch on cpu, {tiny_checkpoint}" in result.stdout
    cpu = cpu_features()  # the CPU the figures were measured on
    assert report["cpu"]["model"] == cpu.model
    assert {k for k, v in report["cpu"]["flags"].items() if v} == {f for f in REPORTED_FLAGS if cpu.has(f)}
    assert {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile"} <= set(report["cpu"]["flags"])
    assert report["backend"] == "onnxruntime-cpu" and [r["batch_size"] for r in report["results"]] == [1, 2]
    assert report["reference"] == "PyTorch on cpu"  # what every ratio is compared against
    for row in report["results"]:
        assert row["runtime_images_per_s"] > 0 and row["reference_images_per_s"] > 0
        assert abs(row["ratio"] - row["runtime_images_per_s"] / row["reference_images_per_s"]) < 0.02 * row["ratio"] + 0.01
    assert_floor_keys(report)
    # guidance (cfg 2 by the model's defaults) doubles the rows: the stages meet the rate of 2 and 4 rows
    assert report["sampling"]["cfg_scale"] == 2.0 and set(report["compute_gflops_per_s"]) == {"2", "4", "256"}
    assert report["floor_decoder"] == "counted on the checkpoint's tokenizer"
    # a backend off the CPU has no floor beside it: the table says so and leaves the columns empty
    gpu = {**report, **NO_FLOOR_REPORT, "results": [{**row, **NO_FLOOR} for row in report["results"]]}
    lines = table(gpu).splitlines()
    assert f"floor:     none: {NO_FLOOR_REPORT['no_floor']}" in lines
    assert lines[header + 1].split()[-3:] == ["-", "-", "-"]


def assert_floor_keys(report: dict) -> None:
    """Every result against the floor: its keys agree with each other and with the measured images/s."""
    assert report["streaming_gb_per_s"] > 0 and min(report["compute_gflops_per_s"].values()) > 0
    for row in report["results"]:
        parts = row["floor_seconds_per_image"]
        stages = max(parts["stage_weights"], parts["stage_compute"])
        floor_seconds = stages + parts["decoder_compute"]
        assert row["floor_images_per_s"] == pytest.approx(1 / floor_seconds, rel=1e-3, abs=0.01)
        # of_floor: the measured seconds per image over the floor's, so 1.0 would be the limit
        assert row["of_floor"] == pytest.approx(row["floor_images_per_s"] / row["runtime_images_per_s"], rel=0.01)
        weights_rule = parts["stage_weights"] >= parts["stage_compute"] and stages >= parts["decoder_compute"]
        assert row["bound"] == ("weights" if weights_rule else "compute")
        assert row["fp32_floor_images_per_s"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA")
def test_bench_refuses_a_cuda_reference_without_cuda(tiny_checkpoint, tiny_model_dir):
    result = CliRunner().invoke(cli, ["bench", str(tiny_model_dir), "--checkpoint", str(tiny_checkpoint),
                                      "--reference-device", "cuda"])
    assert result.exit_code == 1 and "--reference-device cuda needs a GPU" in result.output


@pytest.mark.slow
def test_bench_preset_dtype_and_profile(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", "--preset", "tiny", "--dtype", "int8", "--batch-size", "2",
                                      "--num-batches", "1", "--repeats", "1", "--profile", "--output", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    # the random model has no sampler defaults of its own, so the export's defaults apply, not cfg 2 / T 1
    assert report["dtype"] == "int8" and report["sampling"]["cfg_scale"] == 1.0
    assert report["gemm_gflops_per_s"] > 0
    p = report["results"][0]["profile"]
    parts = ("stages", "decoder", "sampling", "embedding", "other")
    assert abs(sum(p[f"seconds_{part}"] for part in parts) - p["seconds_total"]) < 1e-3
    assert p["seconds_stages"] > 0 and p["seconds_decoder"] > 0 and p["seconds_sampling"] > 0
    assert p["seconds_embedding"] > 0 and p["seconds_other"] >= 0
    assert 0 < p["transformer_gflop_per_image"] < p["decoder_gflop_per_image"]  # tiny: dim 32, 8 positions
    assert 0 < p["stages_utilization"] < 1.5 and report["results"][0]["ratio"] > 0
    assert_floor_keys(report)
    row = report["results"][0]  # int8 weights are fewer bytes than fp32's: a floor at least as fast
    assert row["fp32_floor_images_per_s"] <= row["floor_images_per_s"]
    if row["bound"] == "weights":
        assert row["fp32_floor_images_per_s"] < row["floor_images_per_s"]


def test_flop_count_matches_the_reference_model_linears(tiny_checkpoint):
    from dnd_bench.profile import transformer_gflop
    from dnd_training.checkpoint import load_checkpoint
    from dnd_training.sampling import generate

    model = load_checkpoint(tiny_checkpoint).build_model()
    a = model.args
    macs = []
    hooks = [m.register_forward_hook(lambda m, i, o: macs.append(o.numel() * m.in_features))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    generate(model, [0], seed=0, cfg_scale=1.0)
    for h in hooks:
        h.remove()
    positions = a.seq_len  # one condition token, then every cell but the last is fed back
    attention = 2 * (a.pred_head_positions[-1] + 1) * 2 * a.n_head * a.head_dim * positions * (positions + 1) // 2
    assert transformer_gflop(a, guided=False) * 1e9 == pytest.approx(2 * sum(macs) + attention, rel=1e-9)
    assert transformer_gflop(a, guided=True) == 2 * transformer_gflop(a, guided=False)


def test_timed_runs_take_turns_and_each_side_keeps_its_best():
    calls, slow = [], {"runtime": [0.03, 0.0, 0.03], "reference": [0.03, 0.03, 0.03]}  # warm-up, then 2 runs

    def side(name):
        def run():
            time.sleep(slow[name][sum(c == name for c in calls)])
            calls.append(name)
        return run

    ours, ref = _rates(10, 2, side("runtime"), side("reference"))
    assert calls == ["runtime", "reference"] * 3  # warm-ups, then alternating timed runs
    assert ours > 10 / 0.02 and ref <= 10 / 0.03  # the runtime's fast first timed run is its best


@pytest.mark.slow
def test_a_model_folder_alone_is_compared_with_the_checkpoint_it_came_from(tiny_checkpoint, tmp_path):
    from dnd_export import export_model
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(tiny_checkpoint.read_bytes())
    model = export_model(checkpoint, tmp_path / "model")
    args = ["bench", str(model), "--batch-size", "1", "--num-batches", "1", "--repeats", "1", "-o", str(tmp_path / "a.json")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"Comparing {model} with the PyTorch reference on {checkpoint.resolve()}" in result.stderr
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["checkpoint"] == str(checkpoint.resolve()) and report["results"][0]["ratio"] > 0

    checkpoint.unlink()  # without that file: the runtime alone, and it says so
    result = CliRunner().invoke(cli, args[:1] + ["--model"] + args[1:])
    assert result.exit_code == 0, result.output
    assert f"Benchmarking the runtime alone: {checkpoint.resolve()}, which it was exported from, does not exist" \
        in result.stderr
    assert "reference: none (the runtime alone)" in result.stdout
    report = json.loads((tmp_path / "a.json").read_text())
    row = report["results"][0]
    assert report["reference"] is None and row["ratio"] is None and row["runtime_images_per_s"] > 0
    # no PyTorch model at hand: the floor comes from the folder, its decoder counted on the decoder graph
    assert_floor_keys(report)
    assert report["floor_decoder"] == "counted on the decoder graph's shapes"
    assert row["floor_seconds_per_image"]["decoder_compute"] > 0


def test_the_default_says_it_benchmarks_a_random_preset(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "--batch-size", "1", "--num-batches", "1", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    assert "No MODEL given: benchmarking a random `tiny` preset" in result.stderr


@pytest.mark.parametrize("flag", ["--batch-size", "--batch"])
def test_a_zero_batch_size_names_the_flag(tiny_model_dir, flag):
    result = CliRunner().invoke(cli, ["bench", str(tiny_model_dir), flag, "0"])
    assert result.exit_code == 2 and "Invalid value for '--batch-size' / '--batch': 0 is not in the range x>=1" \
        in result.output
