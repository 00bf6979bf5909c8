"""Stage 2: train the DnD transformer on pre-extracted codes.

    dnd train extract-codes --config configs/transformer-words.yaml
    dnd train transformer --config configs/transformer-words.yaml [--set train.steps=100] [--resume]
    torchrun --standalone --nproc_per_node 2 -m dnd_training.cli transformer --config ...

Writes train.out_dir/{checkpoint.pt, train_state.pt, log.jsonl, config.yaml, samples/*.png}.
checkpoint.pt is the design's format (model, tokenizer, labels, meta); with train.ema_decay
> 0 it holds the EMA weights. The model's vocab, depth, grid and class count come from the
code file, so the config only says how big the transformer is.
"""
import copy
import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from dnd_sdk.errors import InvalidInputError
from dnd_sdk.sampler import DEFAULTS, SamplingParams
from .checkpoint import load_checkpoint, save_checkpoint
from .codes import CodesConfig, CodeSet, load_codes
from .config import save_config, stored_config
from .distributed import shutdown
from .grids import eval_mode, save_tensor_grid, step_png
from .model import MODEL_CONFIGS, ModelArgs, Transformer
from .sampling import generate
from .tokenizer import TokenizerConfig, code_weights_differ
from .tokenizer_file import load_tokenizer
from .train_common import Loop, TrainConfig, batch_indices, check_same_settings, run, start_run


@dataclass
class TransformerRunConfig:
    model_preset: Optional[str] = None  # a MODEL_CONFIGS name; `model` entries override it
    model: dict = field(default_factory=dict)
    codes: CodesConfig = field(default_factory=CodesConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/transformer"))
    sampler_defaults: Optional[SamplingParams] = None  # stored in meta (its stored settings); also used for the sample grids
    sample_classes: int = 8  # classes shown in each sample grid: a column each, titled by name, 2 images

    def __post_init__(self):
        if self.sampler_defaults is not None:  # a setting the config leaves out takes the sampler's default
            self.sampler_defaults = self.sampler_defaults.with_defaults(DEFAULTS)


def heads_for_depth(n_layer: int, depth: int, n_layer_given: bool) -> dict:
    """A preset made for another code depth (`tiny` has 2 heads, the word codes 4): one head after each of
    the last `depth` layers, as every preset places them, with at least `depth` layers."""
    if n_layer < depth and n_layer_given:
        raise InvalidInputError(f"model.n_layer {n_layer} is too few for the code file's {depth} depth heads (one "
                                f"layer each); raise it to {depth} or more, or set model.pred_head_positions")
    n_layer = max(n_layer, depth)
    return {"n_layer": n_layer, "pred_head_positions": list(range(n_layer - depth, n_layer))}


def build_model_args(cfg: TransformerRunConfig, data: CodeSet) -> ModelArgs:
    if cfg.model_preset is not None and cfg.model_preset not in MODEL_CONFIGS:
        raise InvalidInputError(f"unknown model_preset {cfg.model_preset!r}; choose one of {sorted(MODEL_CONFIGS)}")
    fields = {**MODEL_CONFIGS.get(cfg.model_preset, {}), **cfg.model}
    _, h, w, depth = data.codes.shape
    derived = {"vocab_size": data.tokenizer_config["codebook_size"], "num_pred_heads": depth,
               "grid_h": h, "grid_w": w, "num_classes": len(data.label_names)}
    clash = {k: (cfg.model[k], v) for k, v in derived.items() if k in cfg.model and cfg.model[k] != v}
    if clash:
        raise InvalidInputError(f"model settings {clash} (config, code file) contradict the code file; "
                                "leave them out, they are taken from the codes")
    if "pred_head_positions" not in cfg.model and len(fields.get("pred_head_positions", ())) != depth:
        fields.update(heads_for_depth(fields.get("n_layer", ModelArgs.n_layer), depth, "n_layer" in cfg.model))
    return stored_config(ModelArgs, {**fields, **derived}, "model", prefix="config entry ")


def start_weights(path, args: ModelArgs, data: CodeSet, tokenizer) -> dict:
    """The transformer weights of the checkpoint.pt in `path`, which must have these settings and have
    learned the same classes on the same codes (its tokenizer and `tokenizer` map images to codes alike)."""
    start = load_checkpoint(path)
    check_same_settings(path, "model", dataclasses.asdict(args), dataclasses.asdict(start.model_args))
    if start.labels != list(data.label_names):
        raise InvalidInputError(f"train.init_from {path}: its classes {start.labels[:4]}... are not the code file's "
                                f"{list(data.label_names)[:4]}...; a fine-tune needs the same classes in the same order")
    if start.tokenizer_args != tokenizer.config or code_weights_differ(tokenizer.state_dict(), start.tokenizer):
        raise InvalidInputError(f"train.init_from {path} learned other codes than codes.tokenizer makes; start from "
                                "a checkpoint of that tokenizer (or of one whose decoder alone was fine-tuned)")
    return start.model


def train_transformer(cfg: TransformerRunConfig, *, resume: bool = False, force: bool = False, stop_at=None) -> Path:
    """Train per `cfg`; returns the path of the checkpoint.pt written."""
    tcfg = cfg.train
    d = start_run(tcfg, resume=resume, force=force)
    out = Path(tcfg.out_dir)
    data = load_codes(cfg.codes.path)
    tokenizer, _ = load_tokenizer(cfg.codes.tokenizer)
    # through the dataclass, so that a code file written before a config field existed still matches
    if dataclasses.asdict(tokenizer.config) != dataclasses.asdict(TokenizerConfig(**data.tokenizer_config)):
        raise InvalidInputError(f"{cfg.codes.path} was not encoded with {cfg.codes.tokenizer}; "
                                "re-run `dnd train extract-codes` with this tokenizer")
    args = build_model_args(cfg, data)
    torch.manual_seed(tcfg.seed)
    model = Transformer(args)
    if tcfg.init_from and not resume:  # on resume the training state holds the weights
        model.load_state_dict(start_weights(tcfg.init_from, args, data, tokenizer))
    codes = torch.from_numpy(data.codes.astype("int64")).flatten(1, 2)  # [N, L, D], raster order
    labels = torch.from_numpy(data.labels)
    local = d.local_slice(tcfg.batch_size)
    sampler = (cfg.sampler_defaults or DEFAULTS).stored()
    if not args.has_null_class:
        sampler["cfg_scale"] = 1.0  # no null class: guidance is impossible
    meta = {"stage": "transformer", "codes": dataclasses.asdict(cfg.codes), "train": dataclasses.asdict(tcfg),
            "num_codes": int(codes.shape[0])}
    if cfg.sampler_defaults is not None:
        meta["sampler_defaults"] = sampler

    def batch(step):
        idx = batch_indices(tcfg.seed, step, tcfg.batch_size, len(codes))[local]
        return codes[idx].to(d.device), labels[idx].to(d.device)

    def loss(m, b):
        _, total, per_depth = m(*b)
        return total, {f"loss_d{k}": v for k, v in enumerate(per_depth)}

    def save(step, weights, metrics):
        save_checkpoint(out / "checkpoint.pt", weights, tokenizer, data.label_names,
                        {**meta, "step": step, "metrics": metrics})

    def sample(step, weights):
        classes = min(cfg.sample_classes, args.num_classes)
        shown = torch.arange(classes).repeat(2)  # two rows: every class once per row
        # the reference sampler draws its uniforms on the CPU, so it samples from a CPU copy
        m = weights if d.device.type == "cpu" else copy.deepcopy(weights).float().cpu()
        with eval_mode(m):
            images = tokenizer.decode(generate(m, shown, seed=step, **sampler)).clamp(-1, 1)
        save_tensor_grid(step_png(out, step), [images[c::classes] for c in range(classes)],
                         list(data.label_names[:classes]))

    record_config = functools.partial(save_config, cfg, out / "config.yaml")
    run(tcfg, model, d, Loop(batch, loss, save, sample, start=record_config), resume=resume,
        stop_at=stop_at)
    shutdown(d)
    return out / "checkpoint.pt"
