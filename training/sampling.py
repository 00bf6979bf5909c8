"""PyTorch reference sampler: the ground truth the exported runtime must match token for token.

    codes = generate(model, labels=[0, 1], seed=0, cfg_scale=2.0)   # [n, h, w, D] int64

Follows the design's sampling contract (docs/architecture.md) with the same function
names as `dnd_sdk.sampler`, whose numpy code it mirrors.
"""
import numpy as np
import torch

from dnd_sdk.sampler import GREEDY_TEMPERATURE, SamplingParams, image_uniforms


def logits_to_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """[B, V] float32 logits -> [B, V] float64 probabilities, filtered entries at 0."""
    x = logits.double() / temperature
    V = x.shape[-1]
    order = torch.argsort(-x, dim=-1, stable=True)
    keep = torch.ones_like(x, dtype=torch.bool)
    if 0 < top_k < V:
        ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(V).expand_as(order))
        keep = ranks < top_k
    if top_p < 1.0:
        probs_sorted = torch.gather(_softmax(x, keep), -1, order)
        n_keep = torch.minimum((torch.cumsum(probs_sorted, -1) < top_p).sum(-1) + 1, keep.sum(-1))
        in_prefix = torch.arange(V)[None, :] < n_keep[:, None]
        keep = keep & torch.empty_like(keep).scatter_(-1, order, in_prefix)
    return _softmax(x, keep)


def _softmax(x, keep):
    z = x.masked_fill(~keep, float("-inf"))
    e = torch.exp(z - z.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def sample(logits: torch.Tensor, u: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0):
    """One token per row of [B, V] logits, using the row's uniform u [B] (float64)."""
    if temperature < GREEDY_TEMPERATURE:
        return logits.argmax(-1)
    probs = logits_to_probs(logits, temperature, top_k, top_p)
    token = (torch.cumsum(probs, -1) <= u[:, None]).sum(-1)
    last_kept = probs.shape[-1] - 1 - torch.argmax((probs.flip(-1) > 0).int(), -1)
    return torch.minimum(token, last_kept)


def decode_one_token(model, hidden, caches, u, params: SamplingParams):
    """One latent position: run the D stages, sampling each head. Returns tokens [B, D]."""
    tokens = []
    for k in range(model.args.num_pred_heads):
        logits, hidden, caches[k] = model.stage_forward(k, hidden, caches[k])
        logits = logits[:, -1].float()
        if params.guided:
            cond, uncond = logits.chunk(2)
            logits = uncond + params.cfg_scale * (cond - uncond)
        tok = sample(logits, u[:, k], params.temperature_of(k), params.top_k, params.top_p)
        tokens.append(tok)
        if params.guided:
            tok = torch.cat([tok, tok])  # both halves get the same token
        if k < model.args.num_pred_heads - 1:
            hidden = hidden + model.tok_embeddings(tok)[:, None, :]
    return torch.stack(tokens, dim=-1)


@torch.no_grad()
def generate(model, labels, *, seed: int, cfg_scale: float = 1.0, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, head_temperatures=None, image_indices=None) -> torch.Tensor:
    """Sample codes [n, h, w, D] for `labels` (class ids). Image j uses index image_indices[j] (default j)."""
    a = model.args
    params = SamplingParams(cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p,
                            head_temperatures=head_temperatures).validate(a.vocab_size, a.num_pred_heads, a.has_null_class)
    device = next(model.parameters()).device  # the model's device: CPU, or a GPU for `dnd bench --reference-device`
    labels = torch.as_tensor(labels, dtype=torch.long, device=device)
    n = labels.shape[0]
    indices = range(n) if image_indices is None else image_indices
    u = torch.from_numpy(np.stack([image_uniforms(seed, int(i), a.seq_len * a.num_pred_heads) for i in indices]))
    u = u.view(n, a.seq_len, a.num_pred_heads).to(device)
    if params.guided:
        labels = torch.cat([labels, torch.full_like(labels, a.num_classes)])
    caches = [model.empty_cache(labels.shape[0], model.stage_layers(k)) for k in range(a.num_pred_heads)]
    hidden = model.embed_condition(labels)
    codes = []
    for p in range(a.seq_len):
        tokens = decode_one_token(model, hidden, caches, u[:, p], params)  # [n, D]
        codes.append(tokens)
        step_tokens = torch.cat([tokens, tokens]) if params.guided else tokens
        hidden = model.embed_codes(step_tokens[:, None, :])
    return torch.stack(codes, dim=1).view(n, a.grid_h, a.grid_w, a.num_pred_heads)
