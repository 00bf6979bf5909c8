"""The exported graphs, driven step by step in ONNX Runtime, reproduce the PyTorch model."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

from dnd_export import export_model
from dnd_export.onnx_export import export_graph
from dnd_export.stages import DecoderWrapper
from dnd_sdk.model_folder.manifest import load_manifest
from dnd_training.checkpoint import load_checkpoint
from export_helpers import sessions, teacher_forced_logits

CONFIGS = {
    "tiny (D=2, GQA)": {},
    "D=1": dict(num_pred_heads=1, pred_head_positions=[1]),
    "D=4, MHA": dict(n_layer=4, num_pred_heads=4, pred_head_positions=[0, 1, 2, 3], n_kv_head=None),
    "rectangular 3x2": dict(grid_h=3, grid_w=2),
    "heads before the last layer": dict(n_layer=5, pred_head_positions=[0, 2]),
}


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_stage_graphs_match_full_sequence_forward(make_checkpoint, tmp_path, overrides):
    path = make_checkpoint(tmp_path / "c.pt", seed=1, **overrides)
    model_dir = export_model(path, tmp_path / "model")
    model = load_checkpoint(path).build_model()
    g = torch.Generator().manual_seed(0)
    a = model.args
    codes = torch.randint(0, a.vocab_size, (3, a.seq_len, a.num_pred_heads), generator=g)
    labels = torch.tensor([0, a.num_classes - 1, a.num_classes if a.has_null_class else 1])
    with torch.no_grad():
        expected = model(codes, labels)[0].numpy()
    got = teacher_forced_logits(model_dir, codes.numpy(), labels.numpy())
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4
    assert expected.std() > 0.5  # non-trivial logits, so the comparison means something

    m = load_manifest(model_dir)
    assert [s.layers for s in m.stages] == [list(model.stage_layers(k)) for k in range(a.num_pred_heads)]


def test_decoder_graph_matches_pytorch_decoder(tiny_checkpoint, tiny_model_dir, tmp_path):
    tok = load_checkpoint(tiny_checkpoint).build_tokenizer()
    h, w, D = 2, 4, 2
    codes = torch.randint(0, tok.config.codebook_size, (5, h, w, D), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = torch.clamp(tok.decode(codes).permute(0, 2, 3, 1) * 0.5 + 0.5, 0, 1).numpy()
    # the same wrapper without the uint8 step shows the float error before quantisation
    export_graph(DecoderWrapper(tok, as_uint8=False), (codes,), tmp_path / "float_decoder.onnx", ["codes"], ["image"],
                 DecoderWrapper.dynamic_axes(), opset=17)
    float_out = ort.InferenceSession(str(tmp_path / "float_decoder.onnx")).run(None, {"codes": codes.numpy()})[0]
    assert np.abs(float_out - expected).max() <= 1e-4

    _, sess = sessions(tiny_model_dir)
    image = sess["decoder"].run(None, {"codes": codes.numpy()})[0]
    assert image.dtype == np.uint8 and image.shape == (5, 8 * h, 8 * w, 3)
    assert (image == np.floor(255 * expected).astype(np.uint8)).mean() >= 0.999
    assert image.std() > 1  # not a flat image
