"""`dnd info CHECKPOINT`: what a checkpoint.pt holds, read through its memory map (the weights stay on disk)."""
from pathlib import Path

import torch

from dnd_sdk.model_folder.schema import SAMPLER_KEYS
from dnd_sdk.sampler import DEFAULTS
from .checkpoint import load_checkpoint
from .model import Transformer
from .tokenizer import RQTokenizer


def _parameters(module_type, config) -> str:
    """Counted on the meta device: no weights are read, and a table shared by every depth counts once."""
    with torch.device("meta"):
        module = module_type(config)
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f} M parameters"


def _short(names: list, shown: int = 6) -> str:
    return ", ".join(map(str, names[:shown])) + (", ..." if len(names) > shown else "")


def summary(path) -> str:
    """A short human-readable description of a validated checkpoint.pt (CheckpointError if it is not one)."""
    path = Path(path)
    ckpt = load_checkpoint(path, mmap=True)
    a, t, meta = ckpt.model_args, ckpt.tokenizer_args, ckpt.meta
    guidance = "available (null class)" if a.has_null_class else "unavailable (no null class)"
    stored = meta.get("sampler_defaults")
    sampler = ", ".join(f"{k}={v}" for k, v in (stored or DEFAULTS.stored()).items() if k in SAMPLER_KEYS)
    lines = [
        f"{path}: dnd checkpoint ({path.stat().st_size / 2**20:.1f} MiB)"
        + (f", {meta['stage']} stage at step {meta['step']}" if "stage" in meta and "step" in meta else ""),
        f"classes:   {len(ckpt.labels)} ({_short(ckpt.labels)}); guidance {guidance}",
        f"model:     dim {a.dim}, {a.n_layer} layers, {a.n_head} heads ({a.n_kv_head} kv), heads after layers "
        f"{a.pred_head_positions}, vocab {a.vocab_size}; {_parameters(Transformer, a)}",
        f"latent:    {a.grid_h}x{a.grid_w} cells x depth {a.num_pred_heads}",
        f"tokenizer: ch {t.ch}, ch_mult {list(t.ch_mult)}, codebook {t.codebook_size} x {t.embed_dim}"
        f"{' (shared)' if getattr(t, 'shared_codebook', False) else ''}; {_parameters(RQTokenizer, t)}",
        f"image:     {t.image_height}x{t.image_width} RGB",
        "sampler:   " + sampler + ("" if stored else " (none stored: the defaults an export takes)"),
    ]
    train = meta.get("train")
    if isinstance(train, dict):
        lines.append(f"trained:   {train.get('steps')} steps of batch {train.get('batch_size')}, lr {train.get('lr')}, "
                     f"precision {train.get('precision')}"
                     + (f", from {train['init_from']}" if train.get("init_from") else ""))
    if isinstance(meta.get("codes"), dict):
        codes = meta["codes"]
        lines.append(f"codes:     {codes.get('path')} (tokenizer {codes.get('tokenizer')})")
    if isinstance(meta.get("source"), dict):  # dnd import official
        source = meta["source"]
        lines.append("source:    " + ", ".join(f"{k} {v}" for k, v in source.items() if isinstance(v, (str, int, float))))
    lines.append(f"export:    dnd-export {path} -o DIR")
    return "\n".join(lines)
