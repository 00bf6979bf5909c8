"""Shared fixtures: a random-init tiny checkpoint and its fp32 export, built once per session.

    def test_x(tiny_checkpoint, tiny_model_dir): ...       # Path to checkpoint.pt / model folder
    def test_y(make_checkpoint, tmp_path):
        path = make_checkpoint(tmp_path / "c.pt", n_kv_head=4, grid_h=3)   # ModelArgs overrides
"""
import pytest
import torch

TINY_LABELS = ["cat", "dog", "bird", "fish"]
TINY_SAMPLER_DEFAULTS = {"cfg_scale": 2.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0}


def build_checkpoint(path, seed: int = 0, meta=None, **overrides):
    """Save a random tiny Transformer + matching RQTokenizer; returns (path, model, tokenizer)."""
    from dnd_training.checkpoint import save_checkpoint
    from dnd_training.model import MODEL_CONFIGS, ModelArgs, Transformer
    from dnd_training.tokenizer import RQTokenizer, TokenizerConfig

    torch.manual_seed(seed)
    args = ModelArgs(**{**MODEL_CONFIGS["tiny"], **overrides})
    model = Transformer(args).eval()
    # heads start at zero (uniform logits); random heads make every test see distinct logits
    for head in model.output:
        torch.nn.init.normal_(head.weight, std=0.5)
    # ch_mult of 4 levels = 8x downsampling: an 8x8 pixel patch per latent cell
    tok = RQTokenizer(TokenizerConfig(image_height=8 * args.grid_h, image_width=8 * args.grid_w, ch=16,
                                      ch_mult=[1, 2, 2, 2], embed_dim=8, codebook_size=args.vocab_size,
                                      depth=args.num_pred_heads)).eval()
    labels = (TINY_LABELS + [f"class{i}" for i in range(len(TINY_LABELS), args.num_classes)])[: args.num_classes]
    save_checkpoint(path, model, tok, labels, meta=meta if meta is not None else {"note": "random init for tests"})
    return path, model, tok


@pytest.fixture(scope="session")
def make_checkpoint():
    """Factory: make_checkpoint(path, seed=0, meta=None, **ModelArgs overrides) -> Path."""
    return lambda path, **kw: build_checkpoint(path, **kw)[0]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """checkpoint.pt of MODEL_CONFIGS["tiny"] (D=2, grid 2x4, V=64, GQA, null class), labels cat/dog/bird/fish."""
    path = tmp_path_factory.mktemp("tiny") / "checkpoint.pt"
    return build_checkpoint(path, meta={"sampler_defaults": dict(TINY_SAMPLER_DEFAULTS)})[0]


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_checkpoint, tmp_path_factory):
    """fp32 export of tiny_checkpoint (the folder of docs/architecture.md)."""
    from dnd_export import export_model

    torch.set_num_threads(1)
    return export_model(tiny_checkpoint, tmp_path_factory.mktemp("tiny_export") / "model", dtype="fp32")
