"""Two CPU processes under torchrun (gloo) reach the weights of one process with the same global batch."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dnd_training.codes import extract_codes
from dnd_training.config import load_config
from dnd_training.model import ModelArgs, Transformer
from dnd_training.train_tokenizer import TokenizerRunConfig, train_tokenizer
from dnd_training.train_transformer import TransformerRunConfig, train_transformer

DATA = ["height=16", "width=64", "num_classes=4"]


def transformer_overrides(tmp, out):
    # no dropout of any kind: each rank draws its own random numbers, so dropout would differ by design;
    # fp32 whatever the CPU: bf16 rounds the two ranks' half-batch sums apart by more than the tolerance
    return ["model_preset=tiny", "model={class_dropout_prob: 0.0}", "train.precision=fp32", f"codes.path={tmp / 'codes.npz'}",
            f"codes.tokenizer={tmp / 'tok' / 'tokenizer.pt'}", "codes.variants=8", *("codes.data." + d for d in DATA),
            "train.steps=12", "train.batch_size=8", "train.lr=3e-3", "train.warmup_steps=3", "train.log_every=4",
            "train.ckpt_every=6", "train.sample_every=0", "train.num_threads=1", f"train.out_dir={out}"]


@pytest.fixture(scope="module")
def codes_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    train_tokenizer(load_config(TokenizerRunConfig, None, [
        "tokenizer={ch: 8, ch_mult: [1, 2, 2, 2], embed_dim: 8, codebook_size: 16, depth: 2}",
        *("data." + d for d in DATA), "train.steps=6", "train.batch_size=8", "train.sample_every=0",
        f"train.out_dir={tmp / 'tok'}"]))
    extract_codes(load_config(TransformerRunConfig, None, transformer_overrides(tmp, tmp / "x")).codes, progress=False)
    return tmp


@pytest.mark.slow
def test_two_processes_match_one(codes_dir):
    tmp = codes_dir
    single = train_transformer(load_config(TransformerRunConfig, None, transformer_overrides(tmp, tmp / "one")))
    torchrun = Path(sys.executable).with_name("torchrun")
    args = sum((["--set", o] for o in transformer_overrides(tmp, tmp / "two")), [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "dnd_training.cli",
                           "transformer", *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = torch.load(single, weights_only=True)["model"]
    two = torch.load(tmp / "two" / "checkpoint.pt", weights_only=True)["model"]
    assert torch.load(tmp / "one" / "train_state.pt", weights_only=True)["step"] == 12
    for k in one:
        assert torch.allclose(one[k], two[k], rtol=1e-4, atol=1e-6), (k, (one[k] - two[k]).abs().max())
    # and training moved the weights well beyond that tolerance, so the comparison means something
    torch.manual_seed(0)  # train.seed: the initial weights
    init = Transformer(ModelArgs(**torch.load(single, weights_only=True)["model_config"])).state_dict()
    moved = max((one[k] - init[k]).abs().max().item() for k in one)
    assert moved > 1e-3
    # every rank logged the same global-batch means; only rank 0 wrote the log
    lines = (tmp / "two" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 3
