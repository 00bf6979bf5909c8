"""The floor of `dnd bench`: its arithmetic by hand, and the counts it takes from a model folder."""
import numpy as np
import pytest

from dnd_bench.floor import (
    DECODER_ROWS,
    Floor,
    Rates,
    Work,
    decoder_graph_gflop,
    floor_seconds,
    fp32_work,
    matmul_session,
    model_work,
    stage_weight_bytes,
)
from dnd_bench.profile import decoder_gflop, stage_parameters, transformer_gflop
from dnd_sdk.model_folder.manifest import load_manifest


def test_the_floor_by_hand():
    work = Work(positions=4, stage_bytes=1000, stage_flop=800.0, decoder_flop=300.0)
    # batch 2: 4 positions x 1000 bytes / 2 images / 100 bytes/s = 20 s of weights > 800 / 50 = 16 s of arithmetic
    floor = floor_seconds(work, batch=2, bytes_per_s=100.0, stage_flop_per_s=50.0, decoder_flop_per_s=100.0)
    assert floor == {"seconds_per_image": 20 + 3, "bound": "weights", "stage_weights_s": 20.0,
                     "stage_compute_s": 16.0, "decoder_compute_s": 3.0}
    # batch 8 shares the weights among more images: 5 s of weights, the 16 s of arithmetic rule
    floor = floor_seconds(work, batch=8, bytes_per_s=100.0, stage_flop_per_s=50.0, decoder_flop_per_s=100.0)
    assert floor["seconds_per_image"] == 16 + 3 and floor["bound"] == "compute"
    # a decoder heavier than the stages makes the floor compute bound whatever the stages' bound
    heavy = floor_seconds(Work(4, 1000, 800.0, 3000.0), 2, 100.0, 50.0, 100.0)
    assert heavy["seconds_per_image"] == 20 + 30 and heavy["bound"] == "compute"
    # an unknown decoder is left out
    assert floor_seconds(Work(4, 1000, 800.0, None), 2, 100.0, 50.0, 100.0)["seconds_per_image"] == 20


def test_a_result_against_its_floor():
    rates = Rates(bytes_per_s=100.0, flop_per_s={2: 50.0, DECODER_ROWS: 100.0})
    work, fp32 = Work(4, 1000, 800.0, 300.0), Work(4, 4000, 800.0, 300.0)
    floor = Floor(rates, work, fp32, "by hand")
    keys = floor.keys(batch=2, rows=2, images_per_s=1 / 46)  # twice the floor's 23 s
    assert keys == {"floor_images_per_s": round(1 / 23, 2), "of_floor": 2.0, "bound": "weights",
                    "fp32_floor_images_per_s": round(1 / (80 + 3), 2),  # 4 x 4000 / 2 / 100 s of fp32 weights
                    "floor_seconds_per_image": {"stage_weights": 20.0, "stage_compute": 16.0,
                                                "decoder_compute": 3.0}}
    assert floor.report_keys() == {"streaming_gb_per_s": 0.0, "compute_gflops_per_s": {"2": 0.0, str(DECODER_ROWS): 0.0},
                                   "floor_decoder": "by hand"}


def test_the_report_gives_the_rates_in_gb_and_gflop_per_s():
    rates = Rates(bytes_per_s=2.5e10, flop_per_s={2: 3e10, DECODER_ROWS: 1.2345e11})
    assert rates.as_dict() == {"streaming_gb_per_s": 25.0,
                               "compute_gflops_per_s": {"2": 30.0, str(DECODER_ROWS): 123.45}}


def stage_files_on_disk(model_dir) -> int:
    return sum(p.stat().st_size for p in model_dir.iterdir() if p.name.startswith("stage"))


def test_stage_weight_bytes_are_the_stage_files_on_disk(tiny_model_dir):
    manifest = load_manifest(tiny_model_dir)
    assert len(manifest.stage_names) == 2 and stage_weight_bytes(manifest) == stage_files_on_disk(tiny_model_dir)


def test_stage_weight_bytes_count_external_data(tiny_checkpoint, tiny_model_dir, tmp_path):
    from dnd_export import export_model

    model = export_model(tiny_checkpoint, tmp_path / "model", dtype="int8", external_threshold=0)
    manifest = load_manifest(model)
    assert [len(manifest.files[name].external_data) for name in manifest.stage_names] == [1, 1]
    assert stage_weight_bytes(manifest) == stage_files_on_disk(model)
    # the decoder's weights lie outside its graph too, and its shapes still count its FLOPs
    assert manifest.files["decoder"].external_data
    assert decoder_graph_gflop(manifest) == decoder_graph_gflop(load_manifest(tiny_model_dir))


def test_the_fp32_weights_are_four_bytes_per_stage_parameter(tiny_checkpoint, tiny_model_dir):
    from dnd_training.checkpoint import load_checkpoint

    model = load_checkpoint(tiny_checkpoint).build_model()
    embeddings = {"cls_embedding.embedding_table.weight", "tok_embeddings.weight"}  # in embeddings.npz, not stages
    parameters = sum(p.numel() for name, p in model.named_parameters() if name not in embeddings)
    assert stage_parameters(model.args) == parameters
    manifest = load_manifest(tiny_model_dir)
    work = model_work(manifest, guided=True, decoder_flop=None)
    assert fp32_work(manifest, work).stage_bytes == 4 * parameters
    # an fp32 folder is those weights and a little more (rotary tables, graph structure)
    assert 4 * parameters < work.stage_bytes < 1.5 * 4 * parameters
    assert work.positions == model.args.seq_len and work.stage_flop == transformer_gflop(model.args, True) * 1e9


@pytest.mark.parametrize("decoder_dtype", ["auto", "int8"])
def test_the_decoder_graph_counts_the_checkpoints_flops(tiny_checkpoint, tmp_path, decoder_dtype):
    from dnd_export import export_model
    from dnd_training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint)
    model = export_model(tiny_checkpoint, tmp_path / "model", decoder_dtype=decoder_dtype)
    counted = decoder_gflop(ckpt.build_tokenizer(), ckpt.build_model().args)
    assert counted > 0 and decoder_graph_gflop(load_manifest(model)) == pytest.approx(counted, rel=1e-12)


def test_the_rates_time_the_products_they_count():
    rng = np.random.default_rng(0)
    w, x = rng.standard_normal((8, 8)).astype(np.float32), rng.standard_normal((3, 8)).astype(np.float32)
    chained, = matmul_session(w, 3, threads=1)(x)  # 3 links: x w w w, each counted as 2 x 3 x 8 x 8 FLOPs
    np.testing.assert_allclose(chained, x @ w @ w @ w, rtol=1e-5)
    wide = rng.standard_normal((8, 20)).astype(np.float32)  # the streaming form: one link, any width
    np.testing.assert_allclose(matmul_session(wide, 1, threads=1)(x[:1])[0], x[:1] @ wide, rtol=1e-5)


def test_a_folder_whose_model_config_is_malformed_is_named(tiny_model_dir):
    from dnd_sdk.errors import ManifestError

    manifest = load_manifest(tiny_model_dir)
    manifest.model_config = {**manifest.model_config, "dim": "32"}
    with pytest.raises(ManifestError, match=r"manifest.json: model_config.dim = '32' is not"):
        model_work(manifest, guided=False, decoder_flop=None)
