"""A tiny transformer memorises a handful of code sequences, and greedy sampling gives them back."""
import pytest
import torch

from dnd_training.model import MODEL_CONFIGS, ModelArgs, Transformer
from dnd_training.sampling import generate


@pytest.mark.slow
def test_overfit_then_greedy_sampling_reproduces_the_sequences():
    torch.manual_seed(0)
    args = ModelArgs(**{**MODEL_CONFIGS["tiny"], "dim": 64, "n_head": 4, "n_kv_head": 2, "class_dropout_prob": 0.0})
    model = Transformer(args)
    labels = torch.arange(args.num_classes)
    codes = torch.randint(0, args.vocab_size, (args.num_classes, args.seq_len, args.num_pred_heads))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(300):
        _, loss, _ = model(codes, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] <= 0.1 * losses[0], (losses[0], losses[-1])
    sampled = generate(model.eval(), labels, seed=0, temperature=0)
    assert torch.equal(sampled.view_as(codes), codes)
