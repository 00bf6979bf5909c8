"""RQ-VAE image tokenizer: conv encoder/decoder around a residual quantizer (one codebook shared by all
depths, or one per depth).

    tok = RQTokenizer(TokenizerConfig(image_height=32, image_width=128, depth=4))
    recon, codes, losses = tok(images)     # training step; images [B, 3, H, W] in [-1, 1]
    codes = tok.encode(images)             # [B, h, w, D] int64, never updates the codebook
    images = tok.decode(codes[..., :2])    # partial depth: sum of the first d codebook rows

Module and state_dict names follow the taming/RQ-VAE layout (encoder.down.{i}.block.{j}, mid.block_1, ...,
quantizer.codebooks.{k}.weight with a zero padding row), so the published RQ-VAE loads into this class as it is.
"""
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

RECON_LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss, "l1+mse": lambda x, y: F.l1_loss(x, y) + F.mse_loss(x, y)}


@dataclass
class TokenizerConfig:
    image_height: int = 32
    image_width: int = 128
    in_channels: int = 3
    ch: int = 64
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4])  # one level per entry; 2**(len-1) downsampling
    num_res_blocks: int = 1
    attn_in_mid: bool = False
    attn_levels: list[int] = field(default_factory=list)  # levels (0 = full size) with attention after each block
    norm_groups: int = 32  # GroupNorm groups (gcd with the channel count)
    z_channels: Optional[int] = None  # encoder output channels; None = embed_dim
    embed_dim: int = 32
    codebook_size: int = 512  # K
    depth: int = 4  # D
    shared_codebook: bool = True  # False: depth k has a table of its own
    decay: float = 0.99
    commitment_weight: float = 0.25
    restart_unused_codes: bool = True
    restart_threshold: float = 1.0  # codes whose EMA usage (vectors per step) falls below this get restarted
    ema_eps: float = 1e-5  # Laplace smoothing of the cluster sizes
    loss_type: str = "l1+mse"

    def __post_init__(self):
        self.ch_mult = [int(m) for m in self.ch_mult]
        self.attn_levels = sorted(int(i) for i in self.attn_levels)
        if self.z_channels is None:
            self.z_channels = self.embed_dim
        problems = []
        if not self.ch_mult or min(self.ch_mult) < 1:
            problems.append(f"ch_mult {self.ch_mult} must be a non-empty list of positive ints")
        elif self.image_height % self.downsample or self.image_width % self.downsample or min(self.image_height, self.image_width) < 1:
            problems.append(f"image size {self.image_height}x{self.image_width} is not a positive multiple of "
                            f"the downsampling factor {self.downsample} (from {len(self.ch_mult)} ch_mult levels)")
        if any(not 0 <= i < len(self.ch_mult) for i in self.attn_levels):
            problems.append(f"attn_levels {self.attn_levels} must be level indices 0..{len(self.ch_mult) - 1}")
        for name in ("in_channels", "ch", "num_res_blocks", "z_channels", "embed_dim", "codebook_size", "depth",
                     "norm_groups"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.decay < 1.0:
            problems.append(f"decay must be in (0, 1), got {self.decay}")
        if self.commitment_weight < 0 or self.ema_eps <= 0:
            problems.append("commitment_weight must be >= 0 and ema_eps > 0")
        if self.loss_type not in RECON_LOSSES:
            problems.append(f"loss_type {self.loss_type!r} is not one of {sorted(RECON_LOSSES)}")
        if problems:
            raise ValueError("invalid TokenizerConfig: " + "; ".join(problems))

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid_h(self) -> int:
        return self.image_height // self.downsample

    @property
    def grid_w(self) -> int:
        return self.image_width // self.downsample


def Normalize(c: int, groups: int) -> nn.GroupNorm:
    # taming uses 32 groups; tiny test models use fewer, since one channel a group is instance norm,
    # which strips each image's mean colour and slows learning
    return nn.GroupNorm(math.gcd(groups, c), c, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = Normalize(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = Normalize(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        return self.nin_shortcut(x) + self.conv2(F.silu(self.norm2(h)))


class AttnBlock(nn.Module):
    """Single-head self-attention over all h*w positions."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.norm = Normalize(c, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (m(h).flatten(2).transpose(1, 2) for m in (self.q, self.k, self.v))  # [B, HW, C]
        out = F.softmax(q @ k.transpose(1, 2) * C ** -0.5, dim=-1) @ v  # [B, HW, C]
        return x + self.proj_out(out.transpose(1, 2).reshape(B, C, H, W))


class Resample(nn.Module):
    """x2 down: pad right/bottom then stride-2 conv (exact halving, as in taming); x2 up: nearest, then conv."""

    def __init__(self, c: int, up: bool):
        super().__init__()
        self.up, self.conv = up, nn.Conv2d(c, c, 3, stride=1 if up else 2, padding=1 if up else 0)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest") if self.up else F.pad(x, (0, 1, 0, 1)))


def _mid(c: int, cfg) -> nn.Module:
    mid, g = nn.Module(), cfg.norm_groups
    mid.block_1, mid.block_2 = ResnetBlock(c, c, g), ResnetBlock(c, c, g)
    mid.attn_1 = AttnBlock(c, g) if cfg.attn_in_mid else nn.Identity()
    return mid


def _run_levels(levels, h, resample: str):
    for level in levels:
        for j, block in enumerate(level.block):
            h = block(h)
            h = level.attn[j](h) if hasattr(level, "attn") else h
        h = getattr(level, resample)(h) if hasattr(level, resample) else h
    return h


class Encoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        chans = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = cfg.ch
        for i, c in enumerate(chans):
            level = nn.Module()
            level.block = nn.ModuleList(ResnetBlock(cin if j == 0 else c, c, cfg.norm_groups)
                                        for j in range(cfg.num_res_blocks))
            if i in cfg.attn_levels:
                level.attn = nn.ModuleList(AttnBlock(c, cfg.norm_groups) for _ in range(cfg.num_res_blocks))
            if i < len(chans) - 1:
                level.downsample = Resample(c, up=False)
            self.down.append(level)
            cin = c
        self.mid = _mid(cin, cfg)
        self.norm_out, self.conv_out = Normalize(cin, cfg.norm_groups), nn.Conv2d(cin, cfg.z_channels, 3, padding=1)

    def forward(self, x):
        h = _run_levels(self.down, self.conv_in(x), "downsample")
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        chans = [cfg.ch * m for m in cfg.ch_mult]
        cin = chans[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = _mid(cin, cfg)
        levels = []
        for i in reversed(range(len(chans))):
            level = nn.Module()
            level.block = nn.ModuleList(ResnetBlock(cin if j == 0 else chans[i], chans[i], cfg.norm_groups)
                                        for j in range(cfg.num_res_blocks + 1))
            if i in cfg.attn_levels:
                level.attn = nn.ModuleList(AttnBlock(chans[i], cfg.norm_groups) for _ in range(cfg.num_res_blocks + 1))
            if i > 0:
                level.upsample = Resample(chans[i], up=True)
            levels.insert(0, level)  # up[i] is resolution level i (0 = full size), run from coarse to fine
            cin = chans[i]
        self.up = nn.ModuleList(levels)
        self.norm_out, self.conv_out = Normalize(cin, cfg.norm_groups), nn.Conv2d(cin, cfg.in_channels, 3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        h = _run_levels(reversed(self.up), h, "upsample")
        return self.conv_out(F.silu(self.norm_out(h)))  # not clamped: about [-1, 1]


class Codebook(nn.Module):
    """K codes of size E plus a zero padding row (index K, never chosen), and the EMA statistics that move
    them. Names and shapes are the published RQ-VAE's (VQEmbedding), so its tables load as they are."""

    def __init__(self, K: int, E: int):
        super().__init__()
        codes = torch.randn(K, E)
        # buffers, not parameters: the codebook is moved by EMA statistics, never by the optimizer
        self.register_buffer("weight", torch.cat([codes, torch.zeros(1, E)]))
        self.register_buffer("cluster_size_ema", torch.ones(K))  # starts consistent: codes = embed_ema / size
        self.register_buffer("embed_ema", codes.clone())

    @property
    def codes(self):  # [K, E], a view: writes go into the table
        return self.weight[:-1]


class ResidualQuantizer(nn.Module):
    """Greedy residual quantization over D depths with EMA codebooks: one shared by all depths, or one per depth."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        K, E = cfg.codebook_size, cfg.embed_dim
        # a shared table sits at every index, so state_dict() lists it under each codebooks.{k}, as published
        books = [Codebook(K, E)] * cfg.depth if cfg.shared_codebook else [Codebook(K, E) for _ in range(cfg.depth)]
        self.codebooks = nn.ModuleList(books)
        self._register_load_state_dict_pre_hook(self._migrate)

    def _migrate(self, state, prefix, *args):
        migrate_codebook_keys(state, self.cfg.depth, prefix)

    # the depth-0 table and its statistics: the one table when shared
    codebook = property(lambda self: self.codebooks[0].codes)
    cluster_size_ema = property(lambda self: self.codebooks[0].cluster_size_ema)
    embed_ema = property(lambda self: self.codebooks[0].embed_ema)

    def nearest(self, r, k: int = 0):  # r [N, E] -> [N] int64; ||r||^2 is the same for every code, so it is left out
        e = self.codebooks[k].codes.float()
        return (e.pow(2).sum(1) - 2 * r @ e.t()).argmin(1)

    def forward(self, z, update: Optional[bool] = None):
        """z [B, h, w, E] -> (z_st [B, h, w, E], codes [B, h, w, D], commitment loss, latent mse per depth [D])."""
        update = self.training if update is None else update
        with torch.autocast(z.device.type, enabled=False):  # code search needs float32 distances
            zf = z.float().reshape(-1, z.shape[-1])  # [N, E]
            residual, cum = zf.detach(), torch.zeros_like(zf)
            residuals, codes, cums = [], [], []
            for k in range(self.cfg.depth):
                idx = self.nearest(residual, k)
                residuals.append(residual)
                codes.append(idx)
                q = F.embedding(idx, self.codebooks[k].weight).float()
                residual, cum = residual - q, cum + q
                cums.append(cum)
            per_depth = torch.stack([(zf - c).pow(2).mean() for c in cums])  # cums carry no grad: this commits z
        if update:
            if self.cfg.shared_codebook:  # one table serves every depth: pool their residuals
                self.ema_update(self.codebooks[0], torch.cat(residuals), torch.cat(codes))
            else:
                for book, vectors, idx in zip(self.codebooks, residuals, codes):
                    self.ema_update(book, vectors, idx)
        z_q = cums[-1].view(z.shape).to(z.dtype)
        codes = torch.stack(codes, -1).view(*z.shape[:-1], -1)  # [B, h, w, D]
        return z + (z_q - z).detach(), codes, per_depth.mean(), per_depth.detach()

    @torch.no_grad()
    def ema_update(self, book: Codebook, vectors, idx):
        """vectors [M, E]: the residuals that chose codes idx [M] of `book`."""
        cfg, K = self.cfg, self.cfg.codebook_size
        one_hot = F.one_hot(idx, K).to(vectors.dtype)  # [M, K]; a matmul, not index_add_, so GPU sums are deterministic
        book.cluster_size_ema.mul_(cfg.decay).add_(one_hot.sum(0), alpha=1 - cfg.decay)
        book.embed_ema.mul_(cfg.decay).add_(one_hot.t() @ vectors, alpha=1 - cfg.decay)
        if cfg.restart_unused_codes:
            # dead codes restart at random current residuals; torch's RNG makes this reproducible on resume
            n = vectors.shape[0]
            pick = torch.randperm(n, device=vectors.device)[:K] if n >= K else torch.randint(n, (K,), device=vectors.device)
            dead = book.cluster_size_ema < cfg.restart_threshold  # [K]
            book.embed_ema.copy_(torch.where(dead[:, None], vectors[pick], book.embed_ema))
            book.cluster_size_ema.masked_fill_(dead, 1.0)
        n = book.cluster_size_ema.sum()
        size = (book.cluster_size_ema + cfg.ema_eps) / (n + K * cfg.ema_eps) * n  # Laplace smoothing, same total
        book.codes.copy_(book.embed_ema / size[:, None])


def migrate_codebook_keys(state: dict, depth: int, prefix: str = "quantizer.") -> dict:
    """Rewrite, in place, a state dict saved before codebooks had the published layout
    (`quantizer.codebook` [K, E] + statistics) into `quantizer.codebooks.{k}.*` with the padding row."""
    old = prefix + "codebook"
    if old in state:
        codes = state.pop(old)
        size, ema = state.pop(prefix + "cluster_size_ema"), state.pop(prefix + "embed_ema")
        weight = torch.cat([codes, codes.new_zeros(1, codes.shape[1])])
        for k in range(depth):
            state.update({f"{prefix}codebooks.{k}.weight": weight, f"{prefix}codebooks.{k}.cluster_size_ema": size,
                          f"{prefix}codebooks.{k}.embed_ema": ema})
    return state


# the parts that map an image to codes; two tokenizers that agree on them make the same codes
CODE_MODULES = ("encoder", "quant_conv")
CODE_WEIGHTS = tuple(f"{m}." for m in CODE_MODULES) + ("quantizer.codebooks.",)


def code_weights_differ(a: dict, b: dict) -> list:
    """Names of the weights deciding the codes that differ between two tokenizer state dicts (same config)."""
    return [k for k in a if k.startswith(CODE_WEIGHTS) and not torch.equal(a[k], b[k])]


class RQTokenizer(nn.Module):
    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder, self.decoder = Encoder(config), Decoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        self.quantizer = ResidualQuantizer(config)
        self.codes_frozen = False

    def freeze_codes(self) -> None:
        """Fix the image -> codes map (encoder, quant_conv, codebook) so that only the decoder side trains:
        codes extracted before stay valid, and so does a transformer trained on them."""
        for part in CODE_MODULES:
            getattr(self, part).requires_grad_(False)
        self.codes_frozen = True

    def latents(self, images):  # [B, 3, H, W] -> [B, h, w, E]
        return self.quant_conv(self.encoder(images)).permute(0, 2, 3, 1)

    @torch.no_grad()
    def encode(self, images):
        """images [B, 3, H, W] in [-1, 1] -> codes [B, h, w, D] int64. Pure: the codebook is never updated."""
        return self.quantizer(self.latents(images), update=False)[1]

    def embed_codes(self, codes):
        """codes [B, h, w, d] (d <= D, int64 or int32) -> z_q [B, E, h, w], the sum of the first d codebook rows."""
        if codes.shape[-1] > self.config.depth:
            raise ValueError(f"codes have depth {codes.shape[-1]}, the tokenizer has {self.config.depth}")
        books = self.quantizer.codebooks
        z = F.embedding(codes[..., 0], books[0].weight)  # [B, h, w, E]
        for k in range(1, codes.shape[-1]):  # static loop over depth: exports as d gathers and adds
            z = z + F.embedding(codes[..., k], books[k].weight)
        return z.permute(0, 3, 1, 2)

    def decode(self, codes):
        """codes [B, h, w, d] -> images [B, 3, H, W], about [-1, 1]; fewer depths give a coarser image."""
        return self.decoder(self.post_quant_conv(self.embed_codes(codes)))

    decode_code = decode

    def forward(self, images):
        """-> (recon [B, 3, H, W], codes [B, h, w, D], losses).
        The codebook moves (EMA) in train mode only, and never after freeze_codes()."""
        z_st, codes, commitment, per_depth = self.quantizer(self.latents(images),
                                                            update=self.training and not self.codes_frozen)
        recon = self.decoder(self.post_quant_conv(z_st.permute(0, 3, 1, 2)))
        rec = RECON_LOSSES[self.config.loss_type](recon.float(), images.float())
        losses = {"recon": rec, "commitment": commitment, "total": rec + self.config.commitment_weight * commitment,
                  "latent_mse": per_depth}  # latent_mse [D]: ||z - first k+1 depths||^2, falls with depth
        return recon, codes, losses

    @torch.no_grad()
    def codebook_usage(self) -> dict:
        """live: fraction of codes above the restart threshold; perplexity: exp(entropy) of the EMA usage."""
        size = self.quantizer.cluster_size_ema.float()
        p = size / size.sum().clamp_min(1e-12)
        return {"live": (size >= self.config.restart_threshold).float().mean().item(),
                "perplexity": torch.exp(-(p * p.clamp_min(1e-12).log()).sum()).item()}
