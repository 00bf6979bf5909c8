"""The numpy sampler: the design's sampling contract, token for token.

`dnd_training.sampling` is the torch reference with the same function names; the two
are meant to be read side by side.
"""
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from .arguments import integer, number
from .errors import InvalidInputError

# Dividing logits by a temperature this small overflows float64 (1e-320 turns every row into
# NaN), and long before that the distribution is one-hot: below it, sampling is greedy.
GREEDY_TEMPERATURE = 1e-6
# Guidance past this scale overflows float32 logits (inf - inf = NaN); useful scales are below 10.
MAX_CFG_SCALE = 100.0


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are drawn. `head_temperatures` (one per depth) overrides `temperature`."""
    cfg_scale: float = 1.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    head_temperatures: Optional[Sequence[float]] = None

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0

    def temperature_of(self, head: int) -> float:
        return float(self.head_temperatures[head]) if self.head_temperatures else float(self.temperature)

    def validate(self, vocab_size: int, depth: int, has_null_class: bool) -> "SamplingParams":
        """Raise InvalidInputError for any bad value or type; return self with normalised types."""
        cfg_scale, temperature = number(self.cfg_scale, "cfg_scale"), number(self.temperature, "temperature")
        temps = [temperature] if self.head_temperatures is None else self._head_temperatures(depth)
        if any(t < 0 for t in temps):
            name = "temperature" if self.head_temperatures is None else "head_temperatures"
            raise InvalidInputError(f"{name} must be >= 0 (0 = greedy), got {min(temps)}", [name])
        top_k = integer(self.top_k, "top_k", 0, vocab_size)
        top_p = number(self.top_p, "top_p")
        if not 0 < top_p <= 1:
            raise InvalidInputError(f"top_p must be in (0, 1] (1 = off), got {top_p}", ["top_p"])
        if not 0 <= cfg_scale <= MAX_CFG_SCALE:
            raise InvalidInputError(f"cfg_scale must be in [0, {MAX_CFG_SCALE:g}] (1 = no guidance), got {cfg_scale}",
                                    ["cfg_scale"])
        if cfg_scale != 1.0 and not has_null_class:
            raise InvalidInputError(
                f"cfg_scale={cfg_scale} needs guidance, but this model was trained without a null class "
                "(class_dropout_prob = 0); use cfg_scale=1", ["cfg_scale"])
        return replace(self, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p,
                       head_temperatures=None if self.head_temperatures is None else tuple(temps))

    def _head_temperatures(self, depth: int) -> list:
        given = self.head_temperatures
        if isinstance(given, (str, bytes)) or not isinstance(given, (Sequence, np.ndarray)) or len(given) != depth:
            raise InvalidInputError(f"head_temperatures must be a list of {depth} numbers (one per depth), "
                                    f"got {given!r}", ["head_temperatures"])
        return [number(t, "head_temperatures") for t in given]


def image_uniforms(seed: int, index: int, count: int) -> np.ndarray:
    """All u values of image `index` of a request with `seed`, in (position, depth) order."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index]))).random(count)


def guide(logits: np.ndarray, cfg_scale: float) -> np.ndarray:
    """[2B, V] logits laid out [cond; uncond] -> [B, V] guided logits, in float32."""
    cond, uncond = np.split(logits.astype(np.float32, copy=False), 2)
    return uncond + np.float32(cfg_scale) * (cond - uncond)


def logits_to_probs(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """[B, V] float32 logits -> [B, V] float64 probabilities with filtered entries at 0."""
    x = logits.astype(np.float64) / temperature
    keep = np.ones(x.shape, dtype=bool)
    if not (0 < top_k < x.shape[-1] or top_p < 1.0):
        return _softmax(x, keep)
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


def _softmax(x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    z = np.where(keep, x, -np.inf)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sample(logits: np.ndarray, u: np.ndarray, temperature: float, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """One token per row of [B, V] float32 logits, using the row's uniform u [B]."""
    if temperature < GREEDY_TEMPERATURE:
        return logits.argmax(axis=-1)
    probs = logits_to_probs(logits, temperature, top_k, top_p)
    cdf = np.cumsum(probs, axis=-1)
    token = (cdf <= u[:, None]).sum(axis=-1)  # first index whose cdf exceeds u
    last_kept = probs.shape[-1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)
    return np.minimum(token, last_kept)


def embed_codes(tok_embeddings: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """codes [B, S, D] -> [B, S, d] float32, depth embeddings added one at a time in depth order.

    The model adds them in the same order, so the float32 sums are bit-identical.
    """
    h = tok_embeddings[codes[..., 0]]
    for k in range(1, codes.shape[-1]):
        h = h + tok_embeddings[codes[..., k]]
    return h


def decode_one_token(stage_step, tok_embeddings: np.ndarray, hidden: np.ndarray, u: np.ndarray,
                     params: SamplingParams) -> np.ndarray:
    """One latent position: run the D stages, sampling each head. Returns tokens [B, D].

    `stage_step(k, hidden [R, S, d]) -> (logits [R, V], hidden_out [R, S, d])` runs stage k with its
    KV cache (R = 2B rows [cond; uncond] under guidance); u [B, D] holds this position's uniforms.
    """
    depth = u.shape[-1]
    tokens = []
    for k in range(depth):
        logits, hidden = stage_step(k, hidden)
        if params.guided:
            logits = guide(logits, params.cfg_scale)
        tok = sample(logits, u[:, k], params.temperature_of(k), params.top_k, params.top_p)
        tokens.append(tok)
        if k < depth - 1:
            both = np.concatenate([tok, tok]) if params.guided else tok  # both halves get the same token
            hidden = hidden + tok_embeddings[both][:, None, :]
    return np.stack(tokens, axis=-1)


def decode_n_tokens(stage_step, tok_embeddings: np.ndarray, hidden: np.ndarray, u: np.ndarray,
                    params: SamplingParams, callback=None) -> np.ndarray:
    """All latent positions from the condition embedding hidden [R, C, d]; u [B, L, D] -> codes [B, L, D]."""
    codes = []
    for p in range(u.shape[1]):
        tokens = decode_one_token(stage_step, tok_embeddings, hidden, u[:, p], params)
        codes.append(tokens)
        both = np.concatenate([tokens, tokens]) if params.guided else tokens
        hidden = embed_codes(tok_embeddings, both[:, None, :])
        if callback is not None:
            callback(p)
    return np.stack(codes, axis=1)
