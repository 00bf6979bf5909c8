"""Export wrappers: one nn.Module per graph, with the graph's I/O names and dynamic axes.

A stage wrapper is stage graph v2 (docs/architecture.md): one new position per row, the
row's absolute position and cache mask as inputs, the whole fixed KV cache as input, and
only the new key/value rows as outputs. The decoder wrapper maps codes to uint8 RGB pixels.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

from dnd_sdk.model_folder.manifest import DIM_NAMES, KV_TEMPLATES
from dnd_training.model import rope_angles
from dnd_training.pixels import to_uint8, unit_range

(BATCH,) = DIM_NAMES
PAST_KEY, PAST_VALUE, NEW_KEY, NEW_VALUE = (KV_TEMPLATES[k] for k in ("past_key", "past_value", "new_key", "new_value"))


@dataclass
class StageIO:
    layers: list  # global layer indices of the stage

    @property
    def inputs(self) -> list:
        return ["hidden", "positions", "kv_mask"] + [n % i for i in self.layers for n in (PAST_KEY, PAST_VALUE)]

    @property
    def outputs(self) -> list:
        return ["logits", "hidden_out"] + [n % i for i in self.layers for n in (NEW_KEY, NEW_VALUE)]

    @property
    def dynamic_axes(self) -> dict:
        # rows are the only dynamic axis: fixed cache shapes suit TensorRT profiles and CUDA graphs
        return {name: {0: BATCH} for name in self.inputs + self.outputs}


def rope_tables(args) -> tuple:
    """cos and signed sin [L, 1, head_dim] for every cache slot, from `rope_angles` itself (so they are
    the reference's very values) and laid out per element of each interleaved pair (x[2j], x[2j+1]):
    cos twice, sin as (-sin, +sin). A stage reads its rows' angles with one Gather per table instead of
    computing them, and `rotate` needs no pair reshapes."""
    cos, sin = rope_angles(args, torch.arange(args.cache_length))  # [L, hd/2]
    return cos.repeat_interleave(2, dim=-1)[:, None, :], torch.stack([-sin, sin], dim=-1).flatten(1)[:, None, :]


def rotate(x, cos, signed_sin, swap):
    """`apply_rope`'s float ops on x [..., hd]: x0*cos + x1*(-sin) is x0*cos - x1*sin exactly, and
    x1*cos + x0*sin is the same sum. `swap` [hd, hd] is the permutation matrix that exchanges each
    pair's elements: a product with it adds only exact zeros to x's own values, and a MatMul costs
    ONNX Runtime far less than a Gather along the last axis."""
    return x * cos + torch.matmul(x, swap) * signed_sin


class FixedSlotCache:
    """The stage graphs' cache strategy (`dnd_training.model.GrowingCache` is the model's): one new position
    per row against the fixed cache [B, kvh, L, hd], each row at its own position. The model's `Block`
    and `Attention` run around it (norms, projections, residuals, feed-forward); it rotates the new
    query and key with the angles of the rows' positions and attends over the cache slots `bias`
    lets through plus the row's own new key. Returns (y [B, 1, d], (new k, new v)).

    Scores against the cache ([B, kvh, rep, L], masked by `bias`) and against the row's own new
    key are joined before the softmax, so the cache itself is never concatenated or repeated.
    Every reshape spells its dims from the model's sizes with -1 for the rows: a dim read from a
    tensor's shape would cost ONNX Runtime a chain of Shape/Gather/Concat nodes per reshape.
    docs/architecture.md ("Stage graph v2") says why this is not the model's own attention.
    """

    def __init__(self, cos, sin, swap, past_k, past_v, bias):
        self.cos, self.sin, self.swap, self.past_k, self.past_v, self.bias = cos, sin, swap, past_k, past_v, bias

    def attend(self, a, qk, v, dropout_p: float) -> tuple:
        kvh, hd, L = a.n_kv_head, a.head_dim, a.cache_length
        rep = a.n_head // kvh
        # q and k rotate together, as n_head + kvh heads; head h reads kv head h // rep, so
        # consecutive query heads share one cache head
        qk = rotate(_to(qk, torch.float32).reshape(-1, a.n_head + kvh, hd), self.cos, self.sin, self.swap)
        q, k = _to(qk, v.dtype).split([a.n_head, kvh], dim=1)
        q = q.reshape(-1, kvh, rep, hd) * (hd ** -0.5)
        k, v = k.reshape(-1, kvh, 1, hd), v.reshape(-1, kvh, 1, hd)
        past_scores = torch.matmul(q, self.past_k.transpose(2, 3)) + self.bias  # [B, kvh, rep, L]
        own_score = (q * k).sum(-1, keepdim=True)                              # [B, kvh, rep, 1]
        # softmax in float32: one row of L + 1 scores per head is cheap, and fp16 exp/sum over L drifts
        probs = _to(torch.softmax(_to(torch.cat([past_scores, own_score], dim=-1), torch.float32), dim=-1), v.dtype)
        y = torch.matmul(probs[..., :L], self.past_v) + probs[..., L:] * v     # [B, kvh, rep, hd]
        return y.reshape(-1, 1, a.dim), (k, v)


def _to(t: torch.Tensor, dtype) -> torch.Tensor:
    """t in dtype, with no Cast node in the graph when it is already."""
    return t if t.dtype == dtype else t.to(dtype)


class StageWrapper(nn.Module):
    """Stage k of the transformer as graph v2, float32 hidden I/O whatever the weight dtype."""

    def __init__(self, model, k: int):
        super().__init__()
        self.model, self.k = model, k
        self.io = StageIO(list(model.stage_layers(k)))
        self.dtype = next(model.parameters()).dtype
        cos, sin = rope_tables(model.args)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        pairs_swapped = torch.arange(model.args.head_dim).reshape(-1, 2).flip(-1).flatten()
        self.register_buffer("pair_swap", torch.eye(model.args.head_dim)[pairs_swapped], persistent=False)
        # the exporter restores the wrapper's mode afterwards, recursively: a wrapper left in
        # training mode would switch the model's class dropout on for whoever uses it next
        self.eval()

    def forward(self, hidden, positions, kv_mask, *past_flat):
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # [B, 1, hd]
        zero, minus_inf = (torch.tensor(v, dtype=self.dtype) for v in (0.0, float("-inf")))
        bias = torch.where(kv_mask, zero, minus_inf)[:, None, None, :]  # [B, 1, 1, L]
        h, new = _to(hidden, self.dtype), []
        for i, past_k, past_v in zip(self.io.layers, past_flat[0::2], past_flat[1::2]):
            h, kv = self.model.layers[i](h, FixedSlotCache(cos, sin, self.pair_swap, past_k, past_v, bias))
            new += kv
        logits = self.model.head(self.k, h)[:, 0]  # [B, V]: a non-negative index, as TensorRT wants
        return (_to(logits, torch.float32), _to(h, torch.float32), *new)

    def example_inputs(self, batch: int = 2) -> tuple:
        # rows at different positions, so the tracer cannot fold a shared position into a constant
        a = self.model.args
        g = torch.Generator().manual_seed(0)
        L = a.cache_length
        positions = torch.tensor([min(3, L - 1), 0] * batch)[:batch]
        mask = torch.arange(L)[None, :] < positions[:, None]
        cache = [torch.randn(batch, a.n_kv_head, L, a.head_dim, generator=g).to(self.dtype)
                 for _ in range(2 * len(self.io.layers))]
        return (torch.randn(batch, 1, a.dim, generator=g), positions, mask, *cache)


class DecoderWrapper(nn.Module):
    """codes [B, h, w, D] int64 -> image [B, H, W, 3] uint8 (or the float pixels, for tests)."""

    def __init__(self, tokenizer, as_uint8: bool = True):
        super().__init__()
        self.tokenizer, self.as_uint8 = tokenizer, as_uint8
        self.eval()  # see StageWrapper

    def forward(self, codes):
        x = self.tokenizer.decode(codes).permute(0, 2, 3, 1)  # [B, H, W, 3] in about [-1, 1]
        return to_uint8(x) if self.as_uint8 else unit_range(x)

    @staticmethod
    def dynamic_axes() -> dict:
        return {"codes": {0: BATCH}, "image": {0: BATCH}}
