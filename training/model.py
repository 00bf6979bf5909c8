"""DnD-Transformer: a LlamaGen-style decoder over residual-quantized image codes.

Each latent position holds D depth codes. D prediction heads sit after intermediate
layers (`pred_head_positions`); the token of head k is embedded and added to the hidden
state before the following layers, so one forward step emits all D codes of a position.

    model = Transformer(ModelArgs(**MODEL_CONFIGS["tiny"]))
    logits, loss, per_depth = model(codes, labels)      # teacher forcing, codes [B, L, D]
    logits_k, hidden, present = model.stage_forward(k, hidden, past)   # KV-cached step
"""
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from dnd_sdk.model_shape import cache_length, stage_cut


@dataclass
class ModelArgs:
    dim: int = 256
    n_layer: int = 8
    n_head: int = 8
    n_kv_head: Optional[int] = None  # None = n_head; fewer = grouped-query attention
    vocab_size: int = 512
    num_pred_heads: int = 4  # D, the code depth
    pred_head_positions: list[int] = field(default_factory=lambda: [4, 5, 6, 7])
    grid_h: int = 4
    grid_w: int = 16
    num_classes: int = 32
    cls_token_num: int = 1
    class_dropout_prob: float = 0.1  # > 0 adds the null class row used by guidance
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    multiple_of: int = 32
    ffn_dim_multiplier: Optional[float] = None
    token_dropout_p: float = 0.0
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.0
    ffn_dropout_p: float = 0.0
    share_prediction_heads: bool = False
    initializer_range: float = 0.02

    def __post_init__(self):
        self.pred_head_positions = [int(p) for p in self.pred_head_positions]
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        problems = []
        if self.dim % self.n_head:
            problems.append(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        elif self.head_dim % 4:
            problems.append(f"head_dim {self.head_dim} must be a multiple of 4 for 2D rotary")
        if self.n_head % self.n_kv_head:
            problems.append(f"n_head {self.n_head} is not a multiple of n_kv_head {self.n_kv_head}")
        pos = self.pred_head_positions
        if len(pos) != self.num_pred_heads:
            problems.append(f"{len(pos)} pred_head_positions for {self.num_pred_heads} heads")
        if any(b <= a for a, b in zip(pos, pos[1:])) or (pos and (pos[0] < 0 or pos[-1] >= self.n_layer)):
            problems.append(f"pred_head_positions {pos} must be strictly increasing layer indices < n_layer {self.n_layer}")
        if self.cls_token_num != 1:
            problems.append("only cls_token_num = 1 is supported for class conditioning")
        if problems:
            raise ValueError("invalid ModelArgs: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def seq_len(self) -> int:  # latent positions
        return self.grid_h * self.grid_w

    @property
    def cache_length(self) -> int:  # KV cache slots a sequence fills
        return cache_length(self.cls_token_num, self.seq_len)

    @property
    def has_null_class(self) -> bool:
        return self.class_dropout_prob > 0

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)


MODEL_CONFIGS = {
    "tiny": dict(dim=32, n_layer=3, n_head=4, n_kv_head=2, vocab_size=64, num_pred_heads=2,
                 pred_head_positions=[1, 2], grid_h=2, grid_w=4, num_classes=4, multiple_of=16),
    "small": dict(dim=256, n_layer=8, n_head=8, vocab_size=512, num_pred_heads=4,
                  pred_head_positions=[4, 5, 6, 7], grid_h=4, grid_w=16, num_classes=32),
    # the shipped word model: small enough to train for thousands of steps on 2 CPU cores
    "words": dict(dim=128, n_layer=6, n_head=4, vocab_size=512, num_pred_heads=4,
                  pred_head_positions=[2, 3, 4, 5], grid_h=4, grid_w=16, num_classes=32),
    "mid": dict(dim=512, n_layer=12, n_head=8, n_kv_head=4, vocab_size=1024, num_pred_heads=4,
                pred_head_positions=[8, 9, 10, 11], grid_h=4, grid_w=16, num_classes=100),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in fp32 whatever the weight dtype, as the published model does
        x32 = x.float()
        out = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


def rope_angles(args: ModelArgs, positions: torch.Tensor) -> tuple:
    """cos, sin [S, head_dim/2] for sequence positions (condition tokens first).

    The export evaluates it once for every cache slot (`dnd_export.stages.rope_tables`), so the
    stage graphs read these very values. Condition positions get cos = sin = 0, which
    zeroes the condition token's q and k exactly like the published model.
    """
    quarter = args.head_dim // 4
    theta = args.rope_base ** (-torch.arange(quarter, dtype=torch.float32) * 4 / args.head_dim)
    # since cell >= 0, truncating division and a subtraction give floor and %
    cell = torch.maximum(positions - args.cls_token_num, torch.zeros_like(positions))
    row = torch.div(cell, args.grid_w, rounding_mode="trunc")
    col = (cell - row * args.grid_w).to(torch.float32)
    row = row.to(torch.float32)
    angles = torch.cat([row[:, None] * theta, col[:, None] * theta], dim=-1)  # [S, hd/2]
    is_latent = (positions >= args.cls_token_num).to(torch.float32)[:, None]
    return torch.cos(angles) * is_latent, torch.sin(angles) * is_latent


def apply_rope(x, cos, sin):
    # x: [B, S, H, hd]; rotate adjacent pairs (x[2j], x[2j+1]) by angle j
    x32 = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = x32[..., 0], x32[..., 1]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)
    return out.flatten(-2).type_as(x)


class GrowingCache:
    """The cache strategy of training and the PyTorch reference sampler: a block's keys and values so far
    [B, kvh, P, hd], which each call extends by its S new positions, rotated by `apply_rope` with the
    angles `cos`, `sin` [S, hd/2] of those positions, and causal attention by SDPA.

    A cache strategy is what `Block` and `Attention` are given for the part of attention that depends on
    how keys and values are kept: `attend(args, qk, v, dropout_p) -> (y [B, S, d], present)`, with qk
    [B, S, d + kvh*hd] the projected queries and keys before rotation and v [B, S, kvh*hd]. The exported
    stage graphs keep theirs in fixed slots (`dnd_export.stages.FixedSlotCache`).
    """

    def __init__(self, cos, sin, past_k, past_v):
        self.cos, self.sin, self.past_k, self.past_v = cos, sin, past_k, past_v

    def attend(self, a: ModelArgs, qk, v, dropout_p: float) -> tuple:
        B, S, _ = qk.shape
        q, k = qk.split([a.dim, a.n_kv_head * a.head_dim], dim=-1)
        q = apply_rope(q.view(B, S, a.n_head, a.head_dim), self.cos, self.sin).transpose(1, 2)  # [B, H, S, hd]
        k = apply_rope(k.view(B, S, a.n_kv_head, a.head_dim), self.cos, self.sin).transpose(1, 2)
        v = v.view(B, S, a.n_kv_head, a.head_dim).transpose(1, 2)
        k = torch.cat([self.past_k, k], dim=2)  # [B, kvh, P+S, hd]
        v = torch.cat([self.past_v, v], dim=2)
        present = (k, v)
        rep = a.n_head // a.n_kv_head
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        # query i sits at absolute position P+i and sees keys 0..P+i
        total = k.shape[2]
        q_pos = torch.arange(S, device=qk.device) + (total - S)
        mask = torch.arange(total, device=qk.device)[None, :] <= q_pos[:, None]  # [S, P+S]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        return y.transpose(1, 2).reshape(B, S, a.dim), present


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        kv_dim = args.n_kv_head * args.head_dim
        self.wqkv = nn.Linear(args.dim, args.dim + 2 * kv_dim, bias=False)
        self.wo = nn.Linear(args.dim, args.dim, bias=False)
        self.resid_dropout = nn.Dropout(args.resid_dropout_p)

    def forward(self, x, cache):
        """x [B, S, d] -> (output [B, S, d], the cache's present keys and values); `cache` a strategy (GrowingCache)."""
        a = self.args
        kv_dim = a.n_kv_head * a.head_dim
        qk, v = self.wqkv(x).split([a.dim + kv_dim, kv_dim], dim=-1)
        y, present = cache.attend(a, qk, v, a.attn_dropout_p if self.training else 0.0)
        return self.resid_dropout(self.wo(y)), present


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.ffn_hidden, bias=False)
        self.w3 = nn.Linear(args.dim, args.ffn_hidden, bias=False)
        self.w2 = nn.Linear(args.ffn_hidden, args.dim, bias=False)
        self.dropout = nn.Dropout(args.ffn_dropout_p)

    def forward(self, x):
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, cache):
        """x [B, S, d] -> (x after the block, present keys and values); `cache` a strategy (GrowingCache)."""
        attn, present = self.attention(self.attention_norm(x), cache)
        h = x + attn
        return h + self.feed_forward(self.ffn_norm(h)), present


class LabelEmbedder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.num_classes = args.num_classes
        self.dropout_prob = args.class_dropout_prob
        self.embedding_table = nn.Embedding(args.num_classes + int(args.has_null_class), args.dim)

    def forward(self, labels):
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)[:, None, :]  # [B, 1, d]


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.cls_embedding = LabelEmbedder(args)
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.tok_dropout = nn.Dropout(args.token_dropout_p)
        # layers after the last head could never influence a head, so they are not built
        self.layers = nn.ModuleList(Block(args) for _ in range(stage_cut(args.pred_head_positions)[-1].stop))
        self.norm = nn.ModuleList(RMSNorm(args.dim, args.norm_eps) for _ in range(args.num_pred_heads))
        if args.share_prediction_heads:
            shared = nn.Linear(args.dim, args.vocab_size, bias=False)
            self.output = nn.ModuleList([shared] * args.num_pred_heads)
        else:
            self.output = nn.ModuleList(
                nn.Linear(args.dim, args.vocab_size, bias=False) for _ in range(args.num_pred_heads))
        self.apply(self._init_weights)
        for head in self.output:
            nn.init.zeros_(head.weight)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.args.initializer_range)

    def embed_condition(self, labels):
        return self.cls_embedding(labels)  # [B, C, d]

    def embed_codes(self, codes):
        # codes [B, S, D] -> sum of depth embeddings [B, S, d], added in depth order
        h = self.tok_embeddings(codes[..., 0])
        for k in range(1, codes.shape[-1]):
            h = h + self.tok_embeddings(codes[..., k])
        return h

    def head(self, k, h):
        return self.output[k](self.norm[k](h)).float()

    def stage_layers(self, k) -> range:
        return stage_cut(self.args.pred_head_positions)[k]

    def empty_cache(self, batch: int, layers=None):
        a, p = self.args, next(self.parameters())
        shape = (batch, a.n_kv_head, 0, a.head_dim)
        return [(p.new_zeros(shape), p.new_zeros(shape)) for _ in (layers or self.layers)]

    def run_layers(self, layers, h, past):
        """Run `layers` over h [B, S, d] with KV cache `past` (one (k, v) per layer)."""
        total = past[0][0].shape[2] + h.shape[1]
        positions = torch.arange(h.shape[1], device=h.device) + (total - h.shape[1])
        cos, sin = rope_angles(self.args, positions)
        present = []
        for i, (pk, pv) in zip(layers, past):
            h, kv = self.layers[i](h, GrowingCache(cos, sin, pk, pv))
            present.append(kv)
        return h, present

    def stage_forward(self, k, hidden, past):
        """Stage k: its layers, then head k. Returns (logits [B,S,V] fp32, hidden_out, present)."""
        h, present = self.run_layers(self.stage_layers(k), hidden, past)
        return self.head(k, h), h, present

    def forward(self, codes, labels):
        """Teacher-forced training forward. codes [B, L, D], labels [B]."""
        a = self.args
        B, L, D = codes.shape
        assert D == a.num_pred_heads and L == a.seq_len, f"codes {tuple(codes.shape)} vs L={a.seq_len}, D={a.num_pred_heads}"
        # position t sees the condition then cells 0..t-1, and predicts cell t
        h = torch.cat([self.embed_condition(labels), self.embed_codes(codes[:, :-1])], dim=1)
        h = self.tok_dropout(h)
        all_logits = []
        for k in range(D):
            h, _ = self.run_layers(self.stage_layers(k), h, self.empty_cache(B, self.stage_layers(k)))
            all_logits.append(self.head(k, h))
            if k < D - 1:
                h = h + self.tok_embeddings(codes[..., k])  # teacher forcing along depth
        logits = torch.stack(all_logits, dim=1)  # [B, D, L, V]
        per_depth = F.cross_entropy(
            logits.reshape(-1, a.vocab_size), codes.permute(0, 2, 1).reshape(-1), reduction="none"
        ).view(B, D, L).mean(dim=(0, 2))
        return logits, per_depth.mean(), per_depth
