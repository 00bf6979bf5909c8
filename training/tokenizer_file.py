"""tokenizer.pt: what `dnd train tokenizer` ships, read back with `torch.load(weights_only=True)`.

    save_tokenizer("runs/tok/tokenizer.pt", tokenizer, meta={...})
    tokenizer, meta = load_tokenizer("runs/tok/tokenizer.pt")     # eval mode, CPU

A full checkpoint.pt (dnd_training.checkpoint) also holds a tokenizer; `load_tokenizer`
accepts either, so a trained model's tokenizer can encode new data.
"""
import dataclasses
from pathlib import Path

from dnd_sdk.errors import CheckpointError
from .config import stored_config
from .tokenizer import RQTokenizer, TokenizerConfig, migrate_codebook_keys
from .torch_files import atomic_torch_save, read_torch_file
from .weights import check_weights

FORMAT, VERSION = "dnd-tokenizer", 1


def save_tokenizer(path, tokenizer: RQTokenizer, meta=None) -> None:
    atomic_torch_save({
        "format": FORMAT, "version": VERSION,
        "tokenizer_config": dataclasses.asdict(tokenizer.config),
        "tokenizer": {k: v.detach().cpu() for k, v in tokenizer.state_dict().items()},
        "meta": dict(meta or {}),
    }, path)


def load_tokenizer(path) -> tuple:
    """-> (RQTokenizer in eval mode, meta dict). Raises CheckpointError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such tokenizer file; train one with `dnd train tokenizer` "
                              "or set codes.tokenizer to the right path")
    raw = read_torch_file(path)
    if not isinstance(raw, dict) or raw.get("format") not in (FORMAT, "dnd-checkpoint"):
        raise CheckpointError(f"{path}: not a dnd tokenizer.pt or checkpoint.pt")
    config = stored_config(TokenizerConfig, raw.get("tokenizer_config"), "tokenizer_config", CheckpointError,
                           f"{path}: ")
    meta, labels = raw.get("meta") or {}, raw.get("labels")  # a checkpoint.pt keeps its words beside the meta
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: meta must be a mapping, got {type(meta).__name__}")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise CheckpointError(f"{path}: labels must be a list of class names, got {labels!r:.80}")
    try:
        tokenizer = RQTokenizer(config)
    except (TypeError, ValueError, RuntimeError, AssertionError, ZeroDivisionError) as e:
        raise CheckpointError(f"{path}: its tokenizer_config describes no buildable tokenizer: {e}") from None
    state = raw.get("tokenizer")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: tokenizer must be a state dict of tensors, got {type(state).__name__}")
    migrate_codebook_keys(state, config.depth)  # files written before the published codebook layout
    try:
        check_weights("tokenizer", tokenizer, state)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    tokenizer.load_state_dict(state)
    return tokenizer.eval(), {"labels": labels, **meta} if labels is not None else dict(meta)
