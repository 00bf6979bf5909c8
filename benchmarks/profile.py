"""Where `dnd bench --profile` says the runtime's time goes, and what the model costs in FLOPs.

FLOPs are 2 x the multiply-adds of every matmul (attention included) over all rows the
runtime computes: guidance doubles the transformer's rows. Utilization of a part is its
achieved GFLOP/s over the GEMM rate measured in the same run (a 1024^3 float32 matmul).
"""
import time

import torch

from dnd_sdk.model_shape import stage_cut
from dnd_sdk.step import StepTimes


def fed_positions(args) -> int:
    """Positions every stage runs once per image: the condition, then every cell but the last."""
    return args.cache_length


def layer_matmul_weights(args) -> int:
    """Weights of one block's matmuls (qkv, output, the three of the feed-forward): also its multiply-adds
    per row and position."""
    kv_dim = args.n_kv_head * args.head_dim
    return args.dim * (args.dim + 2 * kv_dim) + args.dim * args.dim + 3 * args.dim * args.ffn_hidden


def stage_layers(args) -> int:
    """Blocks the stage graphs run: those after the last head are never built."""
    return stage_cut(args.pred_head_positions)[-1].stop


def stage_parameters(args) -> int:
    """Parameters of all stage graphs together: every block with its two norms, and each stage's head with
    its norm (a shared head is counted in every stage, whose graph holds and reads its own copy)."""
    head = args.dim * args.vocab_size + args.dim
    return stage_layers(args) * (layer_matmul_weights(args) + 2 * args.dim) + args.num_pred_heads * head


def transformer_gflop(args, guided: bool) -> float:
    """GFLOP to sample one image: every fed position through every stage layer and head."""
    positions = fed_positions(args)
    keys_seen = positions * (positions + 1) // 2  # position t attends to t + 1 keys
    n_layers = stage_layers(args)
    macs = positions * (n_layers * layer_matmul_weights(args) + args.num_pred_heads * args.dim * args.vocab_size)
    macs += n_layers * 2 * args.n_head * args.head_dim * keys_seen  # q.k and probs.v
    return 2 * macs * (2 if guided else 1) / 1e9


@torch.no_grad()
def decoder_gflop(tokenizer, args) -> float:
    """GFLOP of decoding one image, counted from the shapes every conv/linear layer sees."""
    macs = []

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            macs.append(output.numel() * k)
        elif isinstance(module, torch.nn.Linear):
            macs.append(output.numel() * module.in_features)

    hooks = [m.register_forward_hook(count) for m in tokenizer.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        tokenizer.decode(torch.zeros(1, args.grid_h, args.grid_w, args.num_pred_heads, dtype=torch.long))
    finally:
        for h in hooks:
            h.remove()
    return 2 * sum(macs) / 1e9


def gemm_gflops(threads: int, n: int = 1024, repeats: int = 5) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def profile_runtime(gen, args, tokenizer, runtime, num: int, guided: bool) -> dict:
    """One more run of `runtime` with the scheduler's timings installed (`Scheduler.times`): the seconds
    of its stage calls, sampler, embeddings and decoder calls; "other" is the rest (scheduling, handing
    work between threads, pixels to PIL images)."""
    times = StepTimes()
    gen.scheduler.times = times
    try:
        t0 = time.perf_counter()
        runtime()
        total = time.perf_counter() - t0
    finally:
        gen.scheduler.times = None
    tf, dec = transformer_gflop(args, guided), decoder_gflop(tokenizer, args)
    other = total - times.stages - times.decoder - times.sampling - times.embedding
    return {"seconds_total": round(total, 4), "seconds_stages": round(times.stages, 4),
            "seconds_decoder": round(times.decoder, 4), "seconds_sampling": round(times.sampling, 4),
            "seconds_embedding": round(times.embedding, 4), "seconds_other": round(other, 4),
            "transformer_gflop_per_image": round(tf, 4), "decoder_gflop_per_image": round(dec, 4),
            "stages_gflops_per_s": round(tf * num / times.stages, 2),
            "decoder_gflops_per_s": round(dec * num / times.decoder, 2)}
