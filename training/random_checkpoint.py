"""Checkpoints of a MODEL_CONFIGS preset with random weights: the test suite's tiny model and the
models `dnd bench --preset` times.

    path, model, tokenizer = random_checkpoint(folder / "checkpoint.pt", "tiny", n_kv_head=4)
"""
from pathlib import Path

import torch

from .checkpoint import save_checkpoint
from .model import MODEL_CONFIGS, ModelArgs, Transformer
from .tokenizer import RQTokenizer, TokenizerConfig


def random_checkpoint(path, preset: str = "tiny", seed: int = 0, head_std=None, labels=(), meta=None,
                      tokenizer_config=None, **overrides) -> tuple:
    """Save a random `preset` Transformer (ModelArgs `overrides` applied) and a matching RQTokenizer
    (TokenizerConfig fields in the dict `tokenizer_config` applied); returns (path, model, tokenizer). Class names:
    `labels` first, then class{i}."""
    torch.manual_seed(seed)
    args = ModelArgs(**{**MODEL_CONFIGS[preset], **overrides})
    model = Transformer(args).eval()
    # heads start at zero (uniform logits); random heads make sampling do work and every test see
    # distinct logits. The default std keeps the logits' std about 2 at any width.
    for head in model.output:
        torch.nn.init.normal_(head.weight, std=2 / args.dim ** 0.5 if head_std is None else head_std)
    # the default tokenizer (8x downsampling: an 8x8 pixel patch per latent cell), narrow for the tiny model
    narrow = dict(ch=16, ch_mult=[1, 2, 2, 2], embed_dim=8) if preset == "tiny" else {}
    tokenizer = RQTokenizer(TokenizerConfig(image_height=8 * args.grid_h, image_width=8 * args.grid_w,
                                            codebook_size=args.vocab_size, depth=args.num_pred_heads,
                                            **{**narrow, **(tokenizer_config or {})})).eval()
    names = (list(labels) + [f"class{i}" for i in range(len(labels), args.num_classes)])[: args.num_classes]
    save_checkpoint(path, model, tokenizer, names, meta=meta)
    return Path(path), model, tokenizer
