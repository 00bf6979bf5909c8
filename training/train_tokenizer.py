"""Stage 1: train the RQ tokenizer on images (synthetic words or an image folder).

    dnd train tokenizer --config configs/tokenizer-words.yaml
    dnd train tokenizer --config configs/tokenizer-words.yaml --resume          # continue exactly
    torchrun --standalone --nproc_per_node 2 -m dnd_training.cli tokenizer --config ...

Writes train.out_dir/{tokenizer.pt, train_state.pt, log.jsonl, config.yaml, samples/*.png}.
A sample grid shows each original next to its reconstructions from depth 1 up to D.
With several processes the codebook's EMA statistics are rank 0's (DDP broadcasts buffers).
"""
import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dnd_sdk.errors import InvalidInputError
from .config import save_config
from .data import DataConfig, build_dataset
from .distributed import shutdown
from .grids import eval_mode, save_tensor_grid, step_png
from .tokenizer import RQTokenizer, TokenizerConfig
from .tokenizer_file import load_tokenizer, save_tokenizer
from .train_common import Loop, TrainConfig, batch_indices, check_same_settings, run, start_run


@dataclass
class TokenizerRunConfig:
    tokenizer: dict = field(default_factory=dict)  # TokenizerConfig fields; image size comes from data
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(weight_decay=0.0, out_dir="runs/tokenizer"))
    freeze_codes: bool = False  # with train.init_from: train the decoder only, the codes stay the same


def build_tokenizer_config(cfg: TokenizerRunConfig) -> TokenizerConfig:
    fields = {"image_height": cfg.data.height, "image_width": cfg.data.width, **cfg.tokenizer}
    if (fields["image_height"], fields["image_width"]) != (cfg.data.height, cfg.data.width):
        raise InvalidInputError(f"tokenizer image size {fields['image_height']}x{fields['image_width']} differs from "
                                f"data size {cfg.data.height}x{cfg.data.width}; set only data.height/data.width")
    try:
        return TokenizerConfig(**fields)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"invalid tokenizer config: {e}") from None


def load_batch(dataset, indices) -> tuple:
    items = [dataset[int(i)] for i in indices]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def start_weights(path, config: TokenizerConfig) -> dict:
    """The state dict of the tokenizer in `path`, which must have exactly these settings."""
    start, _ = load_tokenizer(path)
    check_same_settings(path, "tokenizer", dataclasses.asdict(config), dataclasses.asdict(start.config))
    return start.state_dict()


def train_tokenizer(cfg: TokenizerRunConfig, *, resume: bool = False, force: bool = False, stop_at=None) -> Path:
    """Train per `cfg`; returns the path of the tokenizer.pt written."""
    tcfg = cfg.train
    d = start_run(tcfg, resume=resume, force=force)
    out = Path(tcfg.out_dir)
    # synthetic words: every sample of the run is a fresh render unless data.length caps the pool
    dataset = build_dataset(cfg.data, length=cfg.data.length or tcfg.steps * tcfg.batch_size)
    torch.manual_seed(tcfg.seed)
    tokenizer = RQTokenizer(build_tokenizer_config(cfg))
    if tcfg.init_from and not resume:  # on resume the training state holds the weights
        tokenizer.load_state_dict(start_weights(tcfg.init_from, tokenizer.config))
    if cfg.freeze_codes:
        if not tcfg.init_from:
            raise InvalidInputError("freeze_codes keeps a trained tokenizer's codes: set train.init_from to it")
        tokenizer.freeze_codes()
    preview = load_batch(dataset, range(min(8, len(dataset))))[0].to(d.device)
    local = d.local_slice(tcfg.batch_size)
    meta = {"stage": "tokenizer", "data": dataclasses.asdict(cfg.data), "train": dataclasses.asdict(tcfg),
            "labels": list(dataset.labels)}

    def batch(step):
        idx = batch_indices(tcfg.seed, step, tcfg.batch_size, len(dataset))[local]
        return load_batch(dataset, idx)[0].to(d.device)

    def loss(model, images):
        _, _, losses = model(images)
        metrics = {"loss_recon": losses["recon"], "loss_commit": losses["commitment"]}
        metrics.update({f"mse_d{k}": v for k, v in enumerate(losses["latent_mse"])})
        return losses["total"], metrics

    def save(step, weights, metrics):
        save_tokenizer(out / "tokenizer.pt", weights, {**meta, "step": step, "metrics": metrics,
                                                        **weights.codebook_usage()})

    def sample(step, weights):
        with eval_mode(weights):
            codes = weights.encode(preview)
            recons = [weights.decode(codes[..., :k]).clamp(-1, 1) for k in range(1, codes.shape[-1] + 1)]
        titles = ["original"] + [f"{k} code{'s' if k > 1 else ''}" for k in range(1, len(recons) + 1)]
        save_tensor_grid(step_png(out, step), [preview] + recons, titles)

    record_config = functools.partial(save_config, cfg, out / "config.yaml")
    run(tcfg, tokenizer, d, Loop(batch, loss, save, sample, start=record_config), resume=resume,
        stop_at=stop_at)
    shutdown(d)
    return out / "tokenizer.pt"
