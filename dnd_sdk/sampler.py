"""The numpy sampler: the design's sampling contract, token for token.

`dnd_training.sampling` is the torch reference with the same function names; the two
are meant to be read side by side. One position of the numpy inference loop is
`dnd_sdk.step.run_position`; `dnd_sdk.scheduler` runs many requests' images through it as rows
of one batch.
"""
from collections.abc import Callable, Mapping, Sequence
from dataclasses import Field, asdict, dataclass, field, fields, replace
from typing import Any, Optional

import numpy as np

from .arguments import integer, number, shown
from .errors import InvalidInputError, arg

# Dividing logits by a temperature this small overflows float64 (1e-320 turns every row into
# NaN), and long before that the distribution is one-hot: below it, sampling is greedy.
GREEDY_TEMPERATURE = 1e-6
# Guidance past this scale overflows float32 logits (inf - inf = NaN); useful scales are below 10.
MAX_CFG_SCALE = 100.0


@dataclass(frozen=True)
class ModelLimits:
    """What checking a setting needs to know of the model it samples."""
    vocab_size: int
    depth: int
    has_null_class: bool


def _cfg_scale(value: Any, model: ModelLimits) -> float:
    cfg_scale = number(value, "cfg_scale")
    if not 0 <= cfg_scale <= MAX_CFG_SCALE:
        raise InvalidInputError(f"{arg('cfg_scale')} must be in [0, {MAX_CFG_SCALE:g}] (1 = no guidance), got {cfg_scale}")
    if cfg_scale != 1.0 and not model.has_null_class:
        raise InvalidInputError(
            f"{arg('cfg_scale')}={cfg_scale} needs guidance, but this model was trained without a null class "
            f"(class_dropout_prob = 0); use {arg('cfg_scale')}=1")
    return cfg_scale


def _temperatures(values: list, name: str) -> list:
    temps = [number(t, name) for t in values]
    if any(t < 0 for t in temps):
        raise InvalidInputError(f"{arg(name)} must be >= 0 (0 = greedy), got {min(temps)}")
    return temps


def _temperature(value: Any, model: ModelLimits) -> float:
    return float(_temperatures([value], "temperature")[0])


def _top_k(value: Any, model: ModelLimits) -> int:
    return integer(value, "top_k", 0, model.vocab_size)


def _top_p(value: Any, model: ModelLimits) -> float:
    top_p = number(value, "top_p")
    if not 0 < top_p <= 1:
        raise InvalidInputError(f"{arg('top_p')} must be in (0, 1] (1 = off), got {top_p}")
    return top_p


def _head_temperatures(value: Any, model: ModelLimits) -> Optional[tuple]:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)) or len(value) != model.depth:
        raise InvalidInputError(f"{arg('head_temperatures')} must be a list of {model.depth} numbers (one per "
                                f"depth), got {shown(value)}")
    return tuple(_temperatures(list(value), "head_temperatures"))


@dataclass(frozen=True)
class Setting:
    """How one field of SamplingParams is defaulted, checked and offered (its dataclass field's metadata).

    default: the value when neither the request nor the model gives one.
    check: (value, model) -> the value in its normal type, or InvalidInputError naming the setting.
    help: what it does, for a command line's --help.
    kind: what a command line parses: float, int, or tuple (comma-separated numbers).
    stored: a model stores a default for it (manifest.json `sampler_defaults`, a checkpoint's meta);
        False for a setting only a request gives.
    unset: what leaving it unset means, where "the model's default" does not say it.
    """
    default: Any
    check: Callable[[Any, ModelLimits], Any]
    help: str
    kind: type = float
    stored: bool = True
    unset: str = ""


def _setting(default: Any, check: Callable[[Any, ModelLimits], Any], help: str, kind: type = float,
             stored: bool = True, unset: str = "") -> Any:
    """A SamplingParams field: None (not given: the model's default) unless set."""
    return field(default=None, metadata={"setting": Setting(default, check, help, kind, stored, unset)})


@dataclass(frozen=True, kw_only=True)  # by keyword only: a field inserted in the middle shifts no values
class SamplingParams:
    """How tokens are drawn: the one definition of the sampler's settings. Each field's metadata (a
    `Setting`) gives its default, its check and its help; from them come the manifest's
    `sampler_defaults` keys, the command-line flags (`dnd_sdk.cli.options`), the keys of the server's
    requests (`dnd_sdk.images_request`) and the validation. A setting left None takes the model's
    default (`with_defaults`), and a model that stores none takes `Setting.default`.

    Adding a setting is a field here plus its arithmetic (in this module and in
    `dnd_training.sampling`); the Generator's signatures name it too (a test keeps them equal).
    """
    cfg_scale: Optional[float] = _setting(1.0, _cfg_scale, "Guidance scale; 1 turns guidance off.")
    temperature: Optional[float] = _setting(1.0, _temperature, "0 is greedy.")
    top_k: Optional[int] = _setting(0, _top_k, "Keep the k most likely tokens; 0 keeps all.", int)
    top_p: Optional[float] = _setting(1.0, _top_p, "Nucleus mass in (0, 1]; 1 keeps all.")
    # a request's setting: no model stores it
    head_temperatures: Optional[Sequence[float]] = _setting(
        None, _head_temperatures, "One temperature per depth head, in head order; overrides the temperature.",
        tuple, stored=False, unset="the temperature for every head")

    @property
    def guided(self) -> bool:
        """Whether guidance is on (of validated settings: None would count as on)."""
        return self.cfg_scale != 1.0

    def as_dict(self) -> dict:
        """The settings as JSON values (metadata.jsonl, run.json, the server's replies)."""
        d = asdict(self)
        return {**d, "head_temperatures": None if self.head_temperatures is None else list(self.head_temperatures)}

    def given(self) -> dict:
        """The settings that are set (not None), by name."""
        return {name: value for name in SETTINGS if (value := getattr(self, name)) is not None}

    def stored(self) -> dict:
        """The settings a model stores as its defaults, by name (manifest.json `sampler_defaults`)."""
        return {name: getattr(self, name) for name in STORED_SETTINGS}

    def with_defaults(self, defaults: "SamplingParams") -> "SamplingParams":
        """These settings, each one left None taken from `defaults` (a model's)."""
        return replace(defaults, **self.given())

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> "SamplingParams":
        """A model's stored defaults (manifest.json `sampler_defaults`, a checkpoint's meta), each one it
        lacks from its Setting.default: a folder written before a setting existed keeps loading. A name
        that is no stored setting (one a newer dnd-sdk knows, say) is InvalidInputError naming it."""
        unknown = sorted(map(str, set(stored) - set(STORED_SETTINGS)))
        if unknown:
            raise InvalidInputError(f"unknown sampler setting(s) {unknown}; a model stores "
                                    f"{', '.join(STORED_SETTINGS)} (a newer dnd-sdk may know more)", unknown)
        return cls(**stored).with_defaults(DEFAULTS)

    def temperature_of(self, head: int) -> float:
        if self.head_temperatures:
            return float(self.head_temperatures[head])
        assert self.temperature is not None, "validate() the settings first"
        return float(self.temperature)

    def validate(self, vocab_size: int, depth: int, has_null_class: bool) -> "SamplingParams":
        """Every setting checked (InvalidInputError for any bad value or type) and in its normal type; one
        left None takes its Setting.default."""
        model = ModelLimits(vocab_size, depth, has_null_class)
        filled = self.with_defaults(DEFAULTS)
        return replace(filled, **{f.name: setting_of(f).check(getattr(filled, f.name), model) for f in fields(self)})


def setting_of(f: Field) -> Setting:
    """The Setting of one of SamplingParams' fields."""
    setting: Setting = f.metadata["setting"]
    return setting


# every setting, in the order of the fields; those a model stores; every setting at its default
SETTINGS: tuple[str, ...] = tuple(f.name for f in fields(SamplingParams))
STORED_SETTINGS: tuple[str, ...] = tuple(f.name for f in fields(SamplingParams) if setting_of(f).stored)
DEFAULTS = SamplingParams(**{f.name: setting_of(f).default for f in fields(SamplingParams)})


def as_sampling(value: Any, name: str = "sampling") -> SamplingParams:
    """`value` if it is a SamplingParams, else InvalidInputError saying to pass one."""
    if not isinstance(value, SamplingParams):
        raise InvalidInputError(f"{arg(name)} must be a SamplingParams, e.g. {arg(name)}=SamplingParams(cfg_scale=2.0, "
                                f"top_k=50) (the settings it leaves unset take the model's defaults); got "
                                f"{shown(value)}")
    return value


def settings_in(arguments: Mapping[str, Any]) -> dict:
    """The settings among a call's `arguments` (its locals()) that are not None, by name.

    A public call names every setting as a keyword parameter (so that help() and an editor show them), and
    passes its locals() here rather than listing them once more; a setting its signature lacks is a
    KeyError at the first call (tests/dnd_sdk/test_settings.py also checks each signature against SETTINGS).
    """
    return {name: arguments[name] for name in SETTINGS if arguments[name] is not None}


def image_uniforms(seed: int, index: int, count: int) -> np.ndarray:
    """All u values of image `index` of a request with `seed`, in (position, depth) order."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index]))).random(count)


def guide(cond: np.ndarray, uncond: np.ndarray, cfg_scale: float) -> np.ndarray:
    """[B, V] conditional and unconditional logits -> [B, V] guided logits, in float32."""
    cond, uncond = cond.astype(np.float32, copy=False), uncond.astype(np.float32, copy=False)
    return uncond + np.float32(cfg_scale) * (cond - uncond)


def logits_to_probs(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """[B, V] float32 logits -> [B, V] float64 probabilities with filtered entries at 0."""
    x = logits.astype(np.float64) / temperature
    if not (0 < top_k < x.shape[-1] or top_p < 1.0):
        return _softmax(x, None)  # nothing filtered
    keep = np.ones(x.shape, dtype=bool)
    order = np.argsort(-x, axis=-1, kind="stable")  # descending, lower index first on ties
    if 0 < top_k < x.shape[-1]:
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.broadcast_to(np.arange(x.shape[-1]), x.shape), axis=-1)
        keep = ranks < top_k
    if top_p < 1.0:
        probs_sorted = np.take_along_axis(_softmax(x, keep), order, axis=-1)
        n_keep = np.minimum((np.cumsum(probs_sorted, axis=-1) < top_p).sum(-1) + 1, keep.sum(-1))
        in_prefix = np.arange(x.shape[-1])[None, :] < n_keep[:, None]
        np.put_along_axis(keep, order, np.take_along_axis(keep, order, -1) & in_prefix, axis=-1)
    return _softmax(x, keep)


def _softmax(x: np.ndarray, keep: Optional[np.ndarray]) -> np.ndarray:
    z = x if keep is None else np.where(keep, x, -np.inf)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sample(logits: np.ndarray, u: np.ndarray, temperature: float, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """One token per row of [B, V] float32 logits, using the row's uniform u [B]."""
    if temperature < GREEDY_TEMPERATURE:
        return logits.argmax(axis=-1)
    probs = logits_to_probs(logits, temperature, top_k, top_p)
    cdf = np.cumsum(probs, axis=-1)
    token = (cdf <= u[:, None]).sum(axis=-1)  # first index whose cdf exceeds u
    # The cdf is flat past the last kept entry, so a token past it counts every index and is V. That needs
    # u >= cdf[-1] (filtered entries end the row, or the float64 sum falls short of 1): only then clamp.
    if (token == probs.shape[-1]).any():
        last_kept = probs.shape[-1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)
        token = np.minimum(token, last_kept)
    return token


def embed_codes(tok_embeddings: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """codes [B, S, D] -> [B, S, d] float32, depth embeddings added one at a time in depth order.

    The model adds them in the same order, so the float32 sums are bit-identical.
    """
    e = tok_embeddings[codes]  # [B, S, D, d]
    h = e[..., 0, :]
    for k in range(1, codes.shape[-1]):
        h = h + e[..., k, :]
    return h


def sample_images(logits: np.ndarray, cond_rows: np.ndarray, uncond_rows: np.ndarray, u: np.ndarray,
                  params: list, k: int) -> np.ndarray:
    """The depth-k token of each of B images whose settings may differ. Returns tokens [B] int64.

    Image i reads logits row cond_rows[i] (and, under guidance, uncond_rows[i]), its uniform u[i]
    and its settings params[i]. Images with equal settings are sampled in one call. Every step is
    row by row, so an image gets the very token it gets alone, whatever shares the batch.
    """
    groups: dict = {}  # settings -> the images that share them
    for i, p in enumerate(params):
        groups.setdefault((p.cfg_scale, p.temperature_of(k), p.top_k, p.top_p), []).append(i)
    tokens = np.empty(len(params), np.int64)
    for (cfg_scale, temperature, top_k, top_p), idx in groups.items():
        if len(idx) == len(params):  # one group (the usual case): every image in order, taken without a gather
            idx = slice(None)
        rows = logits[cond_rows[idx]]
        if cfg_scale != 1.0:
            rows = guide(rows, logits[uncond_rows[idx]], cfg_scale)
        tokens[idx] = sample(rows, u[idx], temperature, top_k, top_p)
    return tokens
