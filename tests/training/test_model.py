import pytest
import torch

from dnd_training.model import MODEL_CONFIGS, ModelArgs, Transformer


def tiny_args(**overrides):
    return ModelArgs(**{**MODEL_CONFIGS["tiny"], **overrides})


def random_model(args, seed=0):
    torch.manual_seed(seed)
    model = Transformer(args)
    for head in model.output:  # heads start at zero; give them values so logits differ
        torch.nn.init.normal_(head.weight, std=0.5)
    return model.eval()


def cached_logits(model, codes, labels):
    """Drive stage_forward position by position with teacher-forced tokens: [B, D, L, V]."""
    a = model.args
    caches = [model.empty_cache(codes.shape[0], model.stage_layers(k)) for k in range(a.num_pred_heads)]
    out = []
    for p in range(a.seq_len):
        hidden = model.embed_condition(labels) if p == 0 else model.embed_codes(codes[:, p - 1:p])
        step = []
        for k in range(a.num_pred_heads):
            logits, hidden, caches[k] = model.stage_forward(k, hidden, caches[k])
            step.append(logits[:, -1])
            hidden = hidden + model.tok_embeddings(codes[:, p:p + 1, k])
        out.append(torch.stack(step, 1))
    return torch.stack(out, 2)


@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("n_kv_head", [4, 2])
@pytest.mark.parametrize("grid", [(3, 3), (2, 5)])
def test_kv_cached_steps_match_full_forward(depth, n_kv_head, grid):
    args = tiny_args(num_pred_heads=depth, n_layer=depth + 1, pred_head_positions=list(range(1, depth + 1)),
                     n_kv_head=n_kv_head, grid_h=grid[0], grid_w=grid[1])
    model = random_model(args)
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, args.vocab_size, (3, args.seq_len, depth), generator=g)
    labels = torch.tensor([0, 2, args.num_classes])  # the null class included
    with torch.no_grad():
        full, _, _ = model(codes, labels)
        stepped = cached_logits(model, codes, labels)
    assert full.shape == (3, depth, args.seq_len, args.vocab_size)
    assert (full - stepped).abs().max().item() <= 1e-4


def test_rope_zeroes_condition_token_and_rotates_by_row_and_column():
    from dnd_training.model import rope_angles
    args = tiny_args(grid_h=2, grid_w=3)
    cos, sin = rope_angles(args, torch.arange(1 + args.seq_len))
    assert torch.all(cos[0] == 0) and torch.all(sin[0] == 0)
    quarter = args.head_dim // 4
    # cell (1, 2) is position 1 + 5: row angles = 1*theta, column angles = 2*theta
    theta = args.rope_base ** (-torch.arange(quarter) * 4 / args.head_dim)
    assert torch.allclose(cos[6, :quarter], torch.cos(theta)) and torch.allclose(cos[6, quarter:], torch.cos(2 * theta))


def test_loss_is_mean_of_per_depth_cross_entropy_and_heads_start_uniform():
    args = tiny_args()
    model = Transformer(args).eval()
    codes = torch.randint(0, args.vocab_size, (2, args.seq_len, args.num_pred_heads))
    _, loss, per_depth = model(codes, torch.tensor([0, 1]))
    # zero-initialised heads give uniform logits: loss = log(V) exactly
    assert torch.allclose(per_depth, torch.full((args.num_pred_heads,), float(torch.log(torch.tensor(64.0)))))
    assert torch.isclose(loss, per_depth.mean())


@pytest.mark.parametrize("bad", [dict(pred_head_positions=[2, 1]), dict(n_head=3), dict(n_kv_head=3),
                                 dict(pred_head_positions=[1, 5]), dict(num_pred_heads=3)])
def test_invalid_config_is_refused_with_a_message(bad):
    with pytest.raises(ValueError, match="invalid ModelArgs"):
        tiny_args(**bad)
