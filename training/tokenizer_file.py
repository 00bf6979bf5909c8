"""tokenizer.pt: what `dnd train tokenizer` ships, read back with `torch.load(weights_only=True)`.

    save_tokenizer("runs/tok/tokenizer.pt", tokenizer, meta={...})
    tokenizer, meta = load_tokenizer("runs/tok/tokenizer.pt")     # eval mode, CPU

A full checkpoint.pt (dnd_training.checkpoint) also holds a tokenizer; `load_tokenizer`
accepts either, so a trained model's tokenizer can encode new data.
"""
import dataclasses
from pathlib import Path

from dnd_sdk.errors import CheckpointError
from .tokenizer import RQTokenizer, TokenizerConfig
from .torch_files import atomic_torch_save, read_torch_file

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
    try:
        tokenizer = RQTokenizer(TokenizerConfig(**raw["tokenizer_config"]))
        tokenizer.load_state_dict(raw["tokenizer"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: tokenizer config or weights are invalid: {str(e).splitlines()[0]}") from None
    meta = dict(raw.get("meta") or {})
    if "labels" in raw:  # a checkpoint.pt keeps its words beside the meta
        meta.setdefault("labels", list(raw["labels"]))
    return tokenizer.eval(), meta
