"""checkpoint.pt: one torch.save dict that `torch.load(weights_only=True)` can read.

    save_checkpoint("checkpoint.pt", model, tokenizer, labels, meta={...})
    ckpt = load_checkpoint("checkpoint.pt")     # validated, raises CheckpointError
    model, tokenizer = ckpt.build_model(), ckpt.build_tokenizer()
    set_sampler_defaults("checkpoint.pt", cfg_scale=1.5, temperature=0.3)   # what `dnd generate` uses
    set_tokenizer("checkpoint.pt", "runs/tok-decoder/tokenizer.pt")          # a decoder fine-tuned later
"""
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from dnd_sdk.errors import CheckpointError, InvalidInputError, arg
from dnd_sdk.labels import label_problem
from dnd_sdk.model_folder.manifest import SAMPLER_KEYS
from dnd_sdk.sampler import SamplingParams
from .config import stored_config
from .model import ModelArgs, Transformer
from .tokenizer import RQTokenizer, TokenizerConfig, code_weights_differ, migrate_codebook_keys
from .tokenizer_file import load_tokenizer
from .torch_files import atomic_torch_save, read_torch_file
from .weights import check_weights, release_pages

FORMAT, VERSION = "dnd-checkpoint", 1
MAX_CONFIG_INT = 1 << 20  # no count in a config (dims, layers, vocabulary, image side) comes near this
REQUIRED_KEYS = ("format", "version", "model_config", "tokenizer_config", "model", "tokenizer", "labels", "meta")


@dataclass
class Checkpoint:
    model_config: dict
    tokenizer_config: dict
    model: dict
    tokenizer: dict
    labels: list
    meta: dict
    mapped: bool = False  # tensors read through mmap (load_checkpoint(mmap=True))

    @property
    def model_args(self) -> ModelArgs:
        return ModelArgs(**self.model_config)

    @property
    def tokenizer_args(self) -> TokenizerConfig:
        return TokenizerConfig(**self.tokenizer_config)

    def build_model(self, dtype=torch.float32) -> Transformer:
        model = Transformer(self.model_args)
        model.load_state_dict(self.model)
        return model.to(dtype).eval()

    def stream_model(self, dtype=torch.float32) -> Transformer:
        """The model for export, holding one copy of the weights: built on the meta device, it takes over the
        loaded tensors (mmap-backed with `load_checkpoint(mmap=True)`), casts them one at a time and empties
        `self.model` as it goes. The Checkpoint has no transformer weights afterwards. A weight that overflows
        `dtype` is refused by name (InvalidInputError)."""
        with torch.device("meta"):
            model = Transformer(self.model_args)
        model.load_state_dict(self.model, assign=True)
        self.model = {}
        cast_module("model", model, dtype, release=self.mapped)
        return model.eval()

    def build_tokenizer(self, dtype=torch.float32, option: str = "decoder_dtype") -> RQTokenizer:
        """The tokenizer in `dtype`; a weight that overflows it is refused by name (InvalidInputError naming
        `option`, the setting that chose the dtype)."""
        tokenizer = RQTokenizer(self.tokenizer_args)
        tokenizer.load_state_dict(self.tokenizer)
        if self.mapped:  # copied: the file's pages need not stay in memory beside the mapped transformer
            for t in self.tokenizer.values():
                release_pages(t)
        cast_module("tokenizer", tokenizer, dtype, option=option)
        return tokenizer.eval()


DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def cast_module(what: str, module: torch.nn.Module, dtype, release: bool = False, option: str = "dtype") -> None:
    """Cast `module`'s float weights to `dtype` in place, one tensor at a time. The weights were checked finite
    in float32, but fp16 ends at 65504 (and bf16 rounds the very largest floats up to inf): a weight that
    becomes inf in the cast would make a model that samples blank images, so it is refused by name.
    release: the source tensors are file-mapped (see release_pages). option: the setting that chose `dtype`."""
    for prefix, sub in module.named_modules():
        tensors = [(n, t, True) for n, t in sub.named_parameters(recurse=False)]
        tensors += [(n, t, False) for n, t in sub.named_buffers(recurse=False)]
        for name, tensor, is_parameter in tensors:
            if not tensor.is_floating_point() or tensor.dtype == dtype:
                continue
            cast = cast_finite(f"{what} weight {prefix + '.' if prefix else ''}{name}", tensor.detach(), dtype, option)
            if is_parameter:
                setattr(sub, name, torch.nn.Parameter(cast, requires_grad=False))
            else:
                sub._buffers[name] = cast
            if release:
                release_pages(tensor)


def cast_finite(name: str, tensor: torch.Tensor, dtype, option: str = "dtype") -> torch.Tensor:
    """`tensor` in `dtype`, or InvalidInputError naming it (and `option`) when a finite value does not fit."""
    cast = tensor.to(dtype)
    if not bool(torch.isfinite(cast).all()):
        largest = float(tensor.abs().max())  # the source is finite: load_checkpoint checked it
        wanted = DTYPE_NAMES.get(dtype, str(dtype))
        raise InvalidInputError(
            f"{name} holds values up to {largest:.4g}, which overflow {wanted} (largest finite value "
            f"{torch.finfo(dtype).max:.4g}): the model would sample blank images. Export with a wider "
            f"{arg(option)} (fp32, or bf16 for TensorRT's stage graphs)")
    return cast


def save_checkpoint(path, model: Transformer, tokenizer: RQTokenizer, labels, meta=None) -> None:
    labels = [str(x) for x in labels]
    if len(labels) != model.args.num_classes:
        raise CheckpointError(f"{len(labels)} labels for a model with num_classes={model.args.num_classes}")
    if label_problem(labels):
        raise CheckpointError(label_problem(labels))
    atomic_torch_save({
        "format": FORMAT, "version": VERSION,
        "model_config": dataclasses.asdict(model.args),
        "tokenizer_config": dataclasses.asdict(tokenizer.config),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "tokenizer": {k: v.detach().cpu() for k, v in tokenizer.state_dict().items()},
        "labels": labels,
        "meta": dict(meta or {}),
    }, path)


def _read(path: Path, mmap: bool = False) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file. Train one with `dnd train` or pass the right path.")
    return read_torch_file(path, mmap)


def _check_config(path: Path, name: str, config) -> None:
    """Every count in a config is a positive int of a sane size: a negative or absurd one would fail
    deep inside torch, or ask for terabytes, instead of naming the field."""
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        # a list holds layer positions or multipliers (0 allowed); a single int is a count (>= 1)
        bad = (any(is_int(v) and not 0 <= v <= MAX_CONFIG_INT for v in value) if isinstance(value, list)
               else is_int(value) and not 1 <= value <= MAX_CONFIG_INT)
        if bad:
            raise CheckpointError(f"{path}: {name}.{f.name} = {value!r} is out of range (1..{MAX_CONFIG_INT})")


def _check_meta(path: Path, meta) -> None:
    """meta is free-form, but what the exporter and `dnd train set-defaults` read from it has a shape."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: meta must be a mapping, got {type(meta).__name__}")
    defaults = meta.get("sampler_defaults")
    if defaults is not None and not isinstance(defaults, dict):
        raise CheckpointError(f"{path}: meta['sampler_defaults'] must be a mapping of sampler settings, got "
                              f"{defaults!r:.80}: the file was changed outside dnd; use the checkpoint.pt its "
                              "training run wrote")
    unknown = sorted(map(str, set(defaults or {}) - set(SAMPLER_KEYS)))
    if unknown:
        raise CheckpointError(f"{path}: meta['sampler_defaults'] has unknown keys {unknown}; allowed: "
                              f"{sorted(SAMPLER_KEYS)}. Fix the checkpoint's meta")


def load_checkpoint(path, mmap: bool = False) -> Checkpoint:
    """Load and validate a checkpoint; every problem raises CheckpointError naming it.
    mmap: leave the tensors in the file's pages until used (see Checkpoint.stream_model)."""
    path = Path(path)
    raw = _read(path, mmap)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{path}: format is {got!r}, expected {FORMAT!r}. Is this a dnd-sdk checkpoint?")
    if raw.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {raw.get('version')!r} is not supported (this build reads {VERSION})")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise CheckpointError(f"{path}: missing required key(s) {missing}")
    ckpt = Checkpoint(**{k: raw[k] for k in REQUIRED_KEYS[2:]}, mapped=mmap)
    model_args = stored_config(ModelArgs, ckpt.model_config, "model_config", CheckpointError, f"{path}: ")
    tok_args = stored_config(TokenizerConfig, ckpt.tokenizer_config, "tokenizer_config", CheckpointError, f"{path}: ")
    _check_meta(path, ckpt.meta)
    _check_config(path, "model_config", model_args)
    _check_config(path, "tokenizer_config", tok_args)
    if not isinstance(ckpt.labels, list) or not all(isinstance(x, str) and x for x in ckpt.labels):
        raise CheckpointError(f"{path}: labels must be a list of non-empty strings, got {type(ckpt.labels).__name__}")
    if not isinstance(ckpt.model, dict) or not isinstance(ckpt.tokenizer, dict):
        raise CheckpointError(f"{path}: model and tokenizer must be state dicts of tensors")
    if len(ckpt.labels) != model_args.num_classes:
        raise CheckpointError(f"{path}: {len(ckpt.labels)} labels but num_classes={model_args.num_classes}")
    if label_problem(ckpt.labels):
        raise CheckpointError(f"{path}: {label_problem(ckpt.labels)}; fix the labels and save the checkpoint again")
    migrate_codebook_keys(ckpt.tokenizer, tok_args.depth)  # files written before the published codebook layout
    if model_args.vocab_size != tok_args.codebook_size or model_args.num_pred_heads != tok_args.depth:
        raise CheckpointError(
            f"{path}: transformer (vocab {model_args.vocab_size}, depth {model_args.num_pred_heads}) does not match "
            f"tokenizer (codebook {tok_args.codebook_size}, depth {tok_args.depth})")
    if (model_args.grid_h, model_args.grid_w) != (tok_args.grid_h, tok_args.grid_w):
        raise CheckpointError(f"{path}: transformer grid {model_args.grid_h}x{model_args.grid_w} "
                              f"!= tokenizer grid {tok_args.grid_h}x{tok_args.grid_w}")
    try:
        with torch.device("meta"):
            model, tokenizer = Transformer(model_args), RQTokenizer(tok_args)
    except (RuntimeError, ValueError, AssertionError, TypeError, ZeroDivisionError) as e:
        raise CheckpointError(f"{path}: its config does not describe a buildable model "
                              f"({type(e).__name__}: {e})") from None
    check_weights("model", model, ckpt.model, mmap)
    check_weights("tokenizer", tokenizer, ckpt.tokenizer, mmap)
    return ckpt


def set_sampler_defaults(path, **values) -> dict:
    """Store new default sampling settings (SamplingParams' stored ones by name; None = keep) in a
    checkpoint's meta, rewriting it atomically; weights are untouched. Returns the stored defaults.

    Export carries them into the manifest, so `dnd generate` without sampling flags uses them.
    """
    path = Path(path)
    unknown = sorted(set(values) - set(SAMPLER_KEYS))
    if unknown:
        raise CheckpointError(f"unknown sampler setting(s) {unknown}; allowed: {list(SAMPLER_KEYS)}")
    args = load_checkpoint(path).model_args
    raw = _read(path)
    defaults = {**dict(raw["meta"].get("sampler_defaults") or {}), **{k: v for k, v in values.items() if v is not None}}
    try:
        params = SamplingParams(**defaults).validate(args.vocab_size, args.num_pred_heads, args.has_null_class)
    except InvalidInputError as e:
        if set(e.names) & {k for k, v in values.items() if v is not None}:
            raise  # the value given now: the command line names its flag
        raise CheckpointError(f"{path}: its stored meta['sampler_defaults']: {e}; give the setting again to "
                              "replace it") from None
    defaults = {k: getattr(params, k) for k in defaults}
    raw["meta"] = {**raw["meta"], "sampler_defaults": defaults}
    atomic_torch_save(raw, path)
    return defaults


def set_tokenizer(path, tokenizer_path) -> None:
    """Replace a checkpoint's tokenizer by one that makes the same codes (same config, encoder and codebook),
    such as a `freeze_codes` fine-tune of its decoder; the transformer stays valid and untouched.
    The checkpoint is rewritten atomically."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    new, _ = load_tokenizer(tokenizer_path)
    if new.config != ckpt.tokenizer_args:
        raise CheckpointError(f"{tokenizer_path}: tokenizer config differs from {path}'s; only a tokenizer that "
                              "makes the same codes can replace it")
    state = new.state_dict()
    changed = code_weights_differ(state, ckpt.tokenizer)
    if changed:
        raise CheckpointError(f"{tokenizer_path}: its encoder or codebook differs from {path}'s ({changed[:3]}), "
                              "so its codes would not be the ones the transformer learned; fine-tune the decoder "
                              "with freeze_codes: true instead")
    raw = _read(path)
    raw["tokenizer"] = {k: v.detach().cpu() for k, v in state.items()}
    raw["meta"] = {**raw["meta"], "tokenizer_from": str(tokenizer_path)}
    atomic_torch_save(raw, path)
