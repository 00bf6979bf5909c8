"""The numpy sampler: the design's sampling contract, token for token.

`dnd_training.sampling` is the torch reference with the same function names; the two
are meant to be read side by side. One position of the numpy inference loop is
`dnd_sdk.step.run_position`; `dnd_sdk.scheduler` runs many requests' images through it as rows
of one batch.
"""
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Optional

import numpy as np

from .arguments import integer, number
from .errors import InvalidInputError, arg

# Dividing logits by a temperature this small overflows float64 (1e-320 turns every row into
# NaN), and long before that the distribution is one-hot: below it, sampling is greedy.
GREEDY_TEMPERATURE = 1e-6
# Guidance past this scale overflows float32 logits (inf - inf = NaN); useful scales are below 10.
MAX_CFG_SCALE = 100.0


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are drawn: the one definition of the sampler's settings, carried from the command line
    (`dnd_sdk.cli.options`) and the server through `Generator.request` to every row of a batch, and
    stored (model_folder.schema.SAMPLER_KEYS) as a model's defaults. `head_temperatures` (one per depth) overrides `temperature`."""
    cfg_scale: float = 1.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    head_temperatures: Optional[Sequence[float]] = None

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0

    def as_dict(self) -> dict:
        """The settings as JSON values (metadata.jsonl, run.json, the server's replies)."""
        d = asdict(self)
        return {**d, "head_temperatures": None if self.head_temperatures is None else list(self.head_temperatures)}

    def temperature_of(self, head: int) -> float:
        return float(self.head_temperatures[head]) if self.head_temperatures else float(self.temperature)

    def validate(self, vocab_size: int, depth: int, has_null_class: bool) -> "SamplingParams":
        """Raise InvalidInputError for any bad value or type; return self with normalised types."""
        cfg_scale, temperature = number(self.cfg_scale, "cfg_scale"), number(self.temperature, "temperature")
        temps = [temperature] if self.head_temperatures is None else self._head_temperatures(depth)
        if any(t < 0 for t in temps):
            name = "temperature" if self.head_temperatures is None else "head_temperatures"
            raise InvalidInputError(f"{arg(name)} must be >= 0 (0 = greedy), got {min(temps)}")
        top_k = integer(self.top_k, "top_k", 0, vocab_size)
        top_p = number(self.top_p, "top_p")
        if not 0 < top_p <= 1:
            raise InvalidInputError(f"{arg('top_p')} must be in (0, 1] (1 = off), got {top_p}")
        if not 0 <= cfg_scale <= MAX_CFG_SCALE:
            raise InvalidInputError(f"{arg('cfg_scale')} must be in [0, {MAX_CFG_SCALE:g}] (1 = no guidance), "
                                    f"got {cfg_scale}")
        if cfg_scale != 1.0 and not has_null_class:
            raise InvalidInputError(
                f"{arg('cfg_scale')}={cfg_scale} needs guidance, but this model was trained without a null class "
                f"(class_dropout_prob = 0); use {arg('cfg_scale')}=1")
        return replace(self, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p,
                       head_temperatures=None if self.head_temperatures is None else tuple(temps))

    def _head_temperatures(self, depth: int) -> list:
        given = self.head_temperatures
        if isinstance(given, (str, bytes)) or not isinstance(given, (Sequence, np.ndarray)) or len(given) != depth:
            raise InvalidInputError(f"{arg('head_temperatures')} must be a list of {depth} numbers (one per "
                                    f"depth), got {given!r}")
        return [number(t, "head_temperatures") for t in given]


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
