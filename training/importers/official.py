"""Published DnD-Transformer checkpoints -> an ordinary dnd checkpoint.pt.

    import_official("XXL/xxl_model.pt", "2d_tokenzier_imagenet/epoch..._model.pt", "checkpoint.pt",
                    ImportSettings(release="imagenet256-xxl"))

The published GPT is the same network as `dnd_training.model.Transformer` under the same key names; the
published RQ-VAE is `dnd_training.tokenizer.RQTokenizer` in its published layout. So the work is reading the
files safely, finding every setting the weights determine, checking it against what was given (official
args, a preset, a release), and writing the checkpoint without a second copy of the weights in memory.
"""
import dataclasses
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional, Union

import torch
import yaml

from dnd_sdk.errors import CheckpointError, InvalidInputError
from dnd_sdk.labels import label_problem
from dnd_sdk.model_folder.hashing import sha256_file
from ..checkpoint import FORMAT, VERSION
from ..config import value_problem
from ..model import ModelArgs, Transformer
from ..tokenizer import RQTokenizer, TokenizerConfig
from ..torch_files import atomic_torch_save
from ..weights import check_weights
from .safe_load import load_untrusted

# GPT_models of the published code: n_layer, n_head, dim
PRESETS = {"GPT-B": (12, 12, 768), "GPT-L": (24, 16, 1024), "GPT-XL": (36, 20, 1280),
           "GPT-XXL": (48, 24, 1536), "GPT-XXXL": (48, 32, 2048)}

# the published ModelArgs defaults, for what neither the weights nor the user decide
OFFICIAL_DEFAULTS = dict(n_kv_head=None, multiple_of=256, ffn_dim_multiplier=None, rope_base=10000.0,
                         norm_eps=1e-5, cls_token_num=1, share_prediction_heads=0, model_type="c2i")
OFFICIAL_FIELDS = {"dim", "n_layer", "n_head", "n_kv_head", "multiple_of", "ffn_dim_multiplier", "rope_base",
                   "norm_eps", "num_classes", "class_dropout_prob", "vocab_size", "cls_token_num", "block_size",
                   "num_pred_heads", "pred_head_positions", "share_prediction_heads", "model_type"}
# the type of each official field, as --gpt-args must give it (the published code writes share_prediction_heads 0/1)
OFFICIAL_TYPES = dict(dim=int, n_layer=int, n_head=int, n_kv_head=Optional[int], multiple_of=int,
                      ffn_dim_multiplier=Optional[float], rope_base=float, norm_eps=float, num_classes=int,
                      class_dropout_prob=float, vocab_size=int, cls_token_num=int, block_size=int, num_pred_heads=int,
                      pred_head_positions=list[int], share_prediction_heads=Union[bool, int], model_type=str)
TRAINING_ONLY_FIELDS = {"token_dropout_p", "attn_dropout_p", "resid_dropout_p", "ffn_dropout_p", "drop_path_rate",
                        "caption_dim", "max_batch_size", "max_seq_len", "initializer_range"}


@dataclass(frozen=True)
class Release:
    preset: str
    pred_head_positions: tuple
    num_classes: int
    class_dropout_prob: float
    image_size: int
    sampler_defaults: dict  # the sampling the published scripts use with it
    imagenet_labels: bool = False


RELEASES = {
    "imagenet256-xxl": Release("GPT-XXL", (39, 47), 1000, 0.1, 256,
                               dict(cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0), imagenet_labels=True),
    "imagenet256-xxxl": Release("GPT-XXXL", (39, 47), 1000, 0.1, 256,
                                dict(cfg_scale=1.7, temperature=1.0, top_k=0, top_p=1.0), imagenet_labels=True),
    "text384-xxl": Release("GPT-XXL", (47,), 1, 0.0, 384, dict(cfg_scale=1.0, temperature=0.1, top_k=0, top_p=1.0)),
    "arxiv256-xxl": Release("GPT-XXL", (26, 29, 32, 35, 38, 41, 44, 47), 1, 0.0, 256,
                            dict(cfg_scale=1.0, temperature=0.1, top_k=0, top_p=1.0)),
}


@dataclass
class ImportSettings:
    """What the weights cannot tell. Each given value is checked against the weights where they can."""
    gpt_args: Optional[dict] = None  # official ModelArgs fields under their official names
    preset: Optional[str] = None
    release: Optional[str] = None
    pred_head_positions: Optional[list] = None
    num_classes: Optional[int] = None
    class_dropout_prob: Optional[float] = None
    image_size: Optional[int] = None
    tokenizer_config: Optional[Path] = None  # default: config.yaml beside the tokenizer file
    labels: Optional[list] = None
    sources: dict = field(default_factory=dict)  # field -> where its value came from, for error messages

    def given(self) -> dict:
        """field -> value of every official GPT setting that was given, later sources winning."""
        out, self.sources = {}, {}

        def put(values: dict, source: str):
            for k, v in values.items():
                if v is not None:
                    out[k], self.sources[k] = v, source
        if self.release:
            if self.release not in RELEASES:
                raise InvalidInputError(f"unknown release {self.release!r}; choose one of {sorted(RELEASES)}")
            r = RELEASES[self.release]
            n_layer, n_head, dim = PRESETS[r.preset]
            put(dict(n_layer=n_layer, n_head=n_head, dim=dim, pred_head_positions=list(r.pred_head_positions),
                     num_classes=r.num_classes, class_dropout_prob=r.class_dropout_prob,
                     num_pred_heads=len(r.pred_head_positions)), f"--release {self.release}")
        if self.preset:
            if self.preset not in PRESETS:
                raise InvalidInputError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
            put(dict(zip(("n_layer", "n_head", "dim"), PRESETS[self.preset])), f"--preset {self.preset}")
        if self.gpt_args is not None:
            put(official_args(self.gpt_args), "--gpt-args")
        put(dict(pred_head_positions=self.pred_head_positions, num_classes=self.num_classes,
                 class_dropout_prob=self.class_dropout_prob), "the command line")
        return out


def official_args(args: dict) -> dict:
    """The official ModelArgs fields of a --gpt-args dict; training-only fields are dropped."""
    if not isinstance(args, dict):
        raise InvalidInputError(f"--gpt-args must hold a JSON object of ModelArgs fields, got {type(args).__name__}")
    unknown = sorted(set(args) - OFFICIAL_FIELDS - TRAINING_ONLY_FIELDS)
    if unknown:
        raise InvalidInputError(f"--gpt-args has fields the published ModelArgs does not: {unknown}")
    for name, value in args.items():
        problem = value_problem(OFFICIAL_TYPES[name], value, name) if name in OFFICIAL_TYPES else None
        if problem:
            raise InvalidInputError(f"--gpt-args: {problem}")
    if args.get("model_type", "c2i") != "c2i":
        raise InvalidInputError(f"model_type {args['model_type']!r}: only class-conditional (c2i) models can be "
                                "imported; text-conditional (t2i) models need a caption encoder dnd-sdk does not have")
    return {k: v for k, v in args.items() if k in OFFICIAL_FIELDS}


def _mismatch(name, given, source, found, key):
    return CheckpointError(f"{name}: {source} says {given}, the weights say {found} (from {key}); "
                           "fix the setting or use the matching file")


# ---------------------------------------------------------------------------------------------- GPT

def gpt_state_dict(raw, path) -> dict:
    """The GPT weights of a published file: bare, or under model/module/state_dict; prefixes stripped."""
    if isinstance(raw, dict):
        for key in ("model", "module", "state_dict"):
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path}: not a DnD-Transformer GPT file (no state dict of tensors found)")
    state = {}
    for key, value in raw.items():
        key = re.sub(r"^(module\.|_orig_mod\.)+", "", key)
        if key == "freqs_cis" or ".kv_cache." in key:  # rebuilt at run time; never weights
            continue
        state[key] = value
    if "tok_embeddings.weight" not in state:
        hint = (" It looks like the RQ-VAE tokenizer file: give the GPT file first, the tokenizer second."
                if any(k.startswith(("encoder.", "quantizer.")) for k in state) else "")
        raise CheckpointError(f"{path}: not a DnD-Transformer GPT file (no tok_embeddings.weight).{hint}")
    return state


def official_gpt_keys(n_layer: int, heads: int) -> set:
    keys = {"cls_embedding.embedding_table.weight", "tok_embeddings.weight"}
    for i in range(n_layer):
        keys |= {f"layers.{i}.{n}.weight" for n in ("attention.wqkv", "attention.wo", "feed_forward.w1",
                                                    "feed_forward.w2", "feed_forward.w3", "attention_norm", "ffn_norm")}
    return keys | {f"{n}.{k}.weight" for n in ("norm", "output") for k in range(heads)}


def _dims(state: dict, key: str, rank: int, path) -> tuple:
    """The shape of tensor `key`, whose size the import reads: refused by name (CheckpointError) when the file
    lacks it or holds something of another rank there (a 0-dim tensor where a matrix belongs, say)."""
    tensor = state.get(key)
    if not isinstance(tensor, torch.Tensor):
        raise CheckpointError(f"{path}: not the published layout: no tensor {key!r}")
    if tensor.dim() != rank:
        raise CheckpointError(f"{path}: {key} has shape {list(tensor.shape)}, but the published layout has a "
                              f"{rank}-dim tensor there; the file is damaged or not a published one")
    return tuple(tensor.shape)


def _yaml(section: dict, name: str, tp, default, path):
    """config.yaml's value `name` (section.key), `default` when absent; refused by name unless of type `tp`."""
    value = section.get(name.split(".", 1)[1], default)
    problem = value_problem(tp, value, name)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    return value


def _count(state: dict, pattern: str) -> int:
    found = {int(m.group(1)) for k in state for m in [re.match(pattern, k)] if m}
    return max(found) + 1 if found else 0


def gpt_model_args(state: dict, given: dict, sources: dict, grid: int, path) -> tuple:
    """-> (ModelArgs, official args as used). Reads what the weights determine and checks what was given."""
    tok = _dims(state, "tok_embeddings.weight", 2, path)
    found = {"vocab_size": (tok[0], "tok_embeddings.weight"), "dim": (tok[1], "tok_embeddings.weight"),
             "n_layer": (_count(state, r"layers\.(\d+)\."), "layers.{i}"),
             "num_pred_heads": (_count(state, r"output\.(\d+)\.weight"), "output.{k}.weight")}
    for name, (value, key) in found.items():
        if name in given and int(given[name]) != value:
            raise _mismatch(name, given[name], sources[name], value, key)
    a = {**OFFICIAL_DEFAULTS, **given, **{k: v for k, (v, _) in found.items()}}
    missing = sorted(official_gpt_keys(a["n_layer"], a["num_pred_heads"]) - set(state))
    unexpected = sorted(set(state) - official_gpt_keys(a["n_layer"], a["num_pred_heads"]))
    if missing or unexpected:
        raise CheckpointError(f"{path}: not the published GPT layout: missing {missing[:8]}, unexpected {unexpected[:8]}")
    for name in ("n_head", "pred_head_positions"):
        if name not in given:
            raise InvalidInputError(f"{name} cannot be read from the weights: give --release, --preset "
                                    "(with --pred-head-positions) or --gpt-args")
    if a["model_type"] != "c2i":
        raise InvalidInputError("only class-conditional (c2i) models can be imported")
    rows = _dims(state, "cls_embedding.embedding_table.weight", 2, path)[0]
    if "num_classes" in given or "class_dropout_prob" in given:
        a.setdefault("class_dropout_prob", 0.1 if rows > int(a.get("num_classes", rows)) else 0.0)
        a.setdefault("num_classes", rows - int(a["class_dropout_prob"] > 0))
    else:  # one row: the single-class releases (no null row); more: the published default, one null row
        a["num_classes"], a["class_dropout_prob"] = (1, 0.0) if rows == 1 else (rows - 1, 0.1)
    want_rows = int(a["num_classes"]) + int(float(a["class_dropout_prob"]) > 0)
    if want_rows != rows:
        raise _mismatch("num_classes + null row", want_rows, sources.get("num_classes", sources.get("class_dropout_prob")),
                        rows, "cls_embedding.embedding_table.weight")
    if a["dim"] % int(a["n_head"]):
        raise _mismatch("n_head", a["n_head"], sources["n_head"], f"dim {a['dim']}, not a multiple", "tok_embeddings.weight")
    hd = a["dim"] // int(a["n_head"])
    qkv = _dims(state, "layers.0.attention.wqkv.weight", 2, path)[0]
    kv_heads = (qkv - a["dim"]) // (2 * hd)
    if a["n_kv_head"] is not None and int(a["n_kv_head"]) != kv_heads:
        raise _mismatch("n_kv_head", a["n_kv_head"], sources["n_kv_head"], kv_heads, "layers.0.attention.wqkv.weight")
    a["n_kv_head"] = kv_heads
    if "block_size" in given and int(given["block_size"]) != grid * grid:
        raise _mismatch("block_size", given["block_size"], sources["block_size"], f"{grid * grid} ({grid}x{grid} latent "
                        "grid of the tokenizer at this image size)", "the tokenizer")
    if int(a["cls_token_num"]) != 1:
        raise InvalidInputError(f"cls_token_num {a['cls_token_num']}: class-conditional models use 1")
    if len(a["pred_head_positions"]) != a["num_pred_heads"]:
        raise _mismatch("pred_head_positions", a["pred_head_positions"], sources["pred_head_positions"],
                        f"{a['num_pred_heads']} heads", "output.{k}.weight")
    if a["share_prediction_heads"]:
        heads = [state[f"output.{k}.weight"] for k in range(a["num_pred_heads"])]
        if not all(torch.equal(heads[0], h) for h in heads[1:]):
            raise _mismatch("share_prediction_heads", a["share_prediction_heads"], sources["share_prediction_heads"],
                            "different heads", "output.{k}.weight")
    try:
        args = ModelArgs(dim=a["dim"], n_layer=a["n_layer"], n_head=int(a["n_head"]), n_kv_head=kv_heads,
                         vocab_size=a["vocab_size"], num_pred_heads=a["num_pred_heads"],
                         pred_head_positions=list(a["pred_head_positions"]), grid_h=grid, grid_w=grid,
                         num_classes=int(a["num_classes"]), class_dropout_prob=float(a["class_dropout_prob"]),
                         rope_base=float(a["rope_base"]), norm_eps=float(a["norm_eps"]), multiple_of=int(a["multiple_of"]),
                         ffn_dim_multiplier=a["ffn_dim_multiplier"],
                         # shared heads are written as D identical heads: the export needs one per stage
                         share_prediction_heads=False)
    except ValueError as e:
        raise InvalidInputError(str(e)) from None
    ffn = _dims(state, "layers.0.feed_forward.w1.weight", 2, path)[0]
    if ffn != args.ffn_hidden:
        raise _mismatch("FFN width (from dim, multiple_of, ffn_dim_multiplier)", args.ffn_hidden,
                        "the settings", ffn, "layers.0.feed_forward.w1.weight")
    return args, a


def dnd_model_state(state: dict, args: ModelArgs) -> dict:
    """The published weights under our keys: layers after the last head are dropped (they feed no head)."""
    with torch.device("meta"):
        reference = Transformer(args)
    out = {k: v for k, v in state.items() if k in reference.state_dict()}
    check_weights("GPT", reference, out)
    return out


# ---------------------------------------------------------------------------------------------- tokenizer

def tokenizer_state_dict(raw, path) -> dict:
    state = raw.get("state_dict") if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        inner = [raw, *(v for v in raw.values() if isinstance(v, dict))] if isinstance(raw, dict) else []
        looks_gpt = any(str(k).endswith("tok_embeddings.weight") for d in inner for k in d)
        hint = " It looks like the GPT file: give the GPT file first, the tokenizer second." if looks_gpt else ""
        raise CheckpointError(f"{path}: not a published RQ-VAE tokenizer file (no state_dict entry).{hint}")
    if "encoder.conv_in.weight" not in state or "quantizer.codebooks.0.weight" not in state:
        raise CheckpointError(f"{path}: its state_dict is not the published RQ-VAE layout "
                              "(no encoder.conv_in.weight / quantizer.codebooks.0.weight)")
    return state


def read_tokenizer_yaml(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: no tokenizer config here; it ships beside the tokenizer file as config.yaml "
                              "(pass it with --tokenizer-config)")
    try:
        arch = (yaml.safe_load(path.read_text()) or {}).get("arch")
        hp, dd = arch["hparams"], arch["ddconfig"]
        if not isinstance(hp, dict) or not isinstance(dd, dict):
            raise TypeError("arch.hparams and arch.ddconfig must be mappings")
    except (yaml.YAMLError, AttributeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a published RQ-VAE config.yaml (needs arch.hparams and arch.ddconfig): {e}") from None
    if hp.get("bottleneck_type", "rq") != "rq" or dd.get("double_z"):
        raise CheckpointError(f"{path}: only the residual-quantized RQ-VAE (bottleneck_type rq, double_z false) is supported")
    return {"hparams": hp, "ddconfig": dd}


def tokenizer_config(cfg: dict, state: dict, image_size: Optional[int], path, weights_path) -> TokenizerConfig:
    """Our TokenizerConfig of a published config.yaml (`path`), each value the weights (of `weights_path`)
    decide checked against them."""
    hp, dd = cfg["hparams"], cfg["ddconfig"]
    levels = _count(state, r"encoder\.down\.(\d+)\.")
    conv_in = _dims(state, "encoder.conv_in.weight", 4, weights_path)
    ch = conv_in[0]
    ch_mult = [_dims(state, f"encoder.down.{i}.block.0.conv2.weight", 4, weights_path)[0] // ch for i in range(levels)]
    resolution = _yaml(dd, "ddconfig.resolution", int, 256, path)
    attn = _yaml(dd, "ddconfig.attn_resolutions", Optional[list[int]], [], path) or []
    book = _dims(state, "quantizer.codebooks.0.weight", 2, weights_path)
    code_shape = (_yaml(hp, "hparams.code_shape", Optional[list[int]], None, path)
                  or [0, 0, _count(state, r"quantizer\.codebooks\.(\d+)\.")])
    if len(code_shape) != 3:
        raise CheckpointError(f"{path}: hparams.code_shape = {code_shape} is not [h, w, depth]")
    found = {
        "ddconfig.ch": (ch, "encoder.conv_in.weight"),
        "ddconfig.in_channels": (conv_in[1], "encoder.conv_in.weight"),
        "ddconfig.ch_mult": (ch_mult, "encoder.down.{i}.block.0.conv2.weight"),
        "ddconfig.num_res_blocks": (_count(state, r"encoder\.down\.0\.block\.(\d+)\."), "encoder.down.0.block.{j}"),
        "ddconfig.z_channels": (_dims(state, "quant_conv.weight", 4, weights_path)[1], "quant_conv.weight"),
        "hparams.embed_dim": (book[1], "quantizer.codebooks.0.weight"),
        "hparams.n_embed": (book[0] - 1, "quantizer.codebooks.0.weight (less its padding row)"),
        "hparams.code_shape[2]": (_count(state, r"quantizer\.codebooks\.(\d+)\."), "quantizer.codebooks.{k}"),
        "ddconfig.attn_resolutions": ([i for i in range(levels) if f"encoder.down.{i}.attn.0.q.weight" in state],
                                      "encoder.down.{i}.attn (as levels)"),
    }
    stated = {"ddconfig.ch": dd.get("ch"), "ddconfig.in_channels": dd.get("in_channels", 3),
              "ddconfig.ch_mult": _yaml(dd, "ddconfig.ch_mult", list[int], [], path),
              "ddconfig.num_res_blocks": dd.get("num_res_blocks"),
              "ddconfig.z_channels": dd.get("z_channels"), "hparams.embed_dim": hp.get("embed_dim"),
              "hparams.n_embed": hp.get("n_embed"), "hparams.code_shape[2]": code_shape[2],
              "ddconfig.attn_resolutions": [i for i in range(levels) if resolution // 2 ** i in attn]}
    for name, (value, key) in found.items():
        if stated[name] != value:
            raise _mismatch(name, stated[name], str(path), value, key)
    shared = _yaml(hp, "hparams.shared_codebook", bool, True, path)
    depth = code_shape[2]
    tables = [state.get(f"quantizer.codebooks.{k}.weight") for k in range(depth)]
    if shared and not all(isinstance(t, torch.Tensor) and torch.equal(tables[0], t) for t in tables):
        raise _mismatch("hparams.shared_codebook", True, str(path), "different tables", "quantizer.codebooks.{k}.weight")
    if image_size is None:  # the latent grid the model was trained on, in pixels
        latent = _yaml(hp, "hparams.latent_shape", Optional[list[int]], None, path)
        image_size = latent[0] * 2 ** (levels - 1) if latent else resolution
    try:
        return TokenizerConfig(
            image_height=image_size, image_width=image_size, in_channels=found["ddconfig.in_channels"][0], ch=ch,
            ch_mult=ch_mult, num_res_blocks=found["ddconfig.num_res_blocks"][0], attn_in_mid=True,
            attn_levels=found["ddconfig.attn_resolutions"][0], norm_groups=32, z_channels=found["ddconfig.z_channels"][0],
            embed_dim=book[1], codebook_size=book[0] - 1, depth=depth, shared_codebook=shared,
            decay=float(_yaml(hp, "hparams.decay", float, 0.99, path)),
            commitment_weight=float(_yaml(hp, "hparams.latent_loss_weight", float, 0.25, path)),
            restart_unused_codes=_yaml(hp, "hparams.restart_unused_codes", bool, True, path),
            loss_type=hp.get("loss_type", "mse") if hp.get("loss_type") in ("mse", "l1") else "mse")
    except ValueError as e:
        raise InvalidInputError(f"{path}: {e}") from None


def build_tokenizer(cfg: TokenizerConfig, state: dict, path) -> RQTokenizer:
    tokenizer = RQTokenizer(cfg)
    expected = set(tokenizer.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{path}: not the published RQ-VAE layout for its config: missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}")
    check_weights("tokenizer", tokenizer, state)
    tokenizer.load_state_dict(state)
    return tokenizer.eval()


# ---------------------------------------------------------------------------------------------- labels, import

def imagenet_labels() -> list:
    """The 1000 ImageNet-1k class names in class-id order (first synonym; repeated names told apart)."""
    return resources.files(__package__).joinpath("imagenet_classes.txt").read_text().splitlines()


def read_labels(path) -> list:
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such labels file (one class name a line)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def import_official(gpt_path, tokenizer_path, out_path, settings: ImportSettings) -> Path:
    """Write `out_path` (a dnd checkpoint.pt) from a published GPT file and RQ-VAE tokenizer file.
    Everything is read and checked before anything is written; the write is atomic."""
    gpt_path, tokenizer_path, out_path = Path(gpt_path), Path(tokenizer_path), Path(out_path)
    given = settings.given()
    release = RELEASES.get(settings.release) if settings.release else None
    image_size = settings.image_size or (release.image_size if release else None)

    tok_raw = load_untrusted(tokenizer_path)
    tok_state = tokenizer_state_dict(tok_raw, tokenizer_path)
    del tok_raw  # the discriminator and optimizer entries are never used
    yaml_path = Path(settings.tokenizer_config or tokenizer_path.parent / "config.yaml")
    tok_cfg = tokenizer_config(read_tokenizer_yaml(yaml_path), tok_state, image_size, yaml_path, tokenizer_path)
    tokenizer = build_tokenizer(tok_cfg, tok_state, tokenizer_path)
    del tok_state  # copied into the tokenizer

    # mmap: the GPT tensors stay in the file's pages and go to the output one storage at a time
    gpt_state = gpt_state_dict(load_untrusted(gpt_path, mmap=True), gpt_path)
    args, official = gpt_model_args(gpt_state, given, settings.sources, tok_cfg.grid_h, gpt_path)
    if args.vocab_size != tok_cfg.codebook_size or args.num_pred_heads != tok_cfg.depth:
        raise CheckpointError(f"the GPT (vocab {args.vocab_size}, {args.num_pred_heads} heads) does not match the "
                              f"tokenizer (codebook {tok_cfg.codebook_size}, depth {tok_cfg.depth}): not a published pair")
    model_state = dnd_model_state(gpt_state, args)
    del gpt_state

    if settings.labels is not None:
        labels = [str(x) for x in settings.labels]
    elif release and release.imagenet_labels:
        labels = imagenet_labels()
    else:
        labels = [str(i) for i in range(args.num_classes)]
    if len(labels) != args.num_classes:
        raise InvalidInputError(f"{len(labels)} labels for a model with {args.num_classes} classes")
    if label_problem(labels):
        raise InvalidInputError(f"labels: {label_problem(labels)}")

    meta = {"source": {
        "kind": "official DnD-Transformer",
        "gpt": {"file": gpt_path.name, "sha256": sha256_file(gpt_path)},
        "tokenizer": {"file": tokenizer_path.name, "sha256": sha256_file(tokenizer_path)},
        "tokenizer_config": {"file": yaml_path.name, "sha256": sha256_file(yaml_path)},
        "release": settings.release, "preset": settings.preset,
        "official_args": json.loads(json.dumps(official, default=str)),
    }}
    if release:
        meta["sampler_defaults"] = dict(release.sampler_defaults)
    atomic_torch_save({
        "format": FORMAT, "version": VERSION,
        "model_config": dataclasses.asdict(args), "tokenizer_config": dataclasses.asdict(tok_cfg),
        "model": model_state, "tokenizer": {k: v.detach() for k, v in tokenizer.state_dict().items()},
        "labels": labels, "meta": meta,
    }, out_path)
    return out_path
