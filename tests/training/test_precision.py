"""train.precision auto: bf16 where the device computes in it, fp32 elsewhere, and the log says which and why."""
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dnd_sdk.cpu import CpuFeatures
from dnd_training.config import load_config
from dnd_training.train_common import TrainConfig, choose_precision
from dnd_training.train_tokenizer import TokenizerRunConfig, train_tokenizer

CONFIGS = Path(__file__).parents[2] / "configs"
CPU = torch.device("cpu")


@pytest.mark.parametrize("flags, precision, why", [
    ({"avx2", "fma"}, "fp32", "has neither AMX nor AVX-512 BF16"),
    ({"avx2", "avx512f", "avx512_vnni"}, "fp32", "has neither AMX nor AVX-512 BF16"),
    ({"avx2", "avx512f", "avx512_bf16"}, "bf16", "has AVX-512 BF16"),
    ({"avx2", "avx512_bf16", "amx_tile", "amx_bf16"}, "bf16", "has AMX"),
])
def test_auto_follows_the_cpu(flags, precision, why):
    chosen, reason = choose_precision(TrainConfig(), CPU, CpuFeatures("Test CPU", frozenset(flags)))
    assert chosen == precision and why in reason and "Test CPU" in reason


@pytest.mark.parametrize("setting", ["bf16", "fp32"])
def test_a_set_precision_overrides_the_device(setting):
    for flags in ({"avx2"}, {"amx_bf16", "avx512_bf16"}):
        chosen, reason = choose_precision(TrainConfig(precision=setting), CPU, CpuFeatures("x", frozenset(flags)))
        assert chosen == setting and reason == f"train.precision={setting} in the config"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_leave_the_choice_to_the_device(name):
    assert yaml.safe_load((CONFIGS / name).read_text())["train"].get("precision", "auto") == "auto"


def test_the_log_says_which_and_why(tmp_path, caplog):
    cfg = load_config(TokenizerRunConfig, None, [
        "tokenizer={ch: 8, ch_mult: [1, 2, 2, 2], embed_dim: 8, codebook_size: 16, depth: 2}", "data.height=16",
        "data.width=64", "data.num_classes=4", "train.steps=1", "train.batch_size=2", "train.sample_every=0",
        "train.num_threads=1", f"train.out_dir={tmp_path / 'tok'}"])
    with caplog.at_level(logging.INFO, logger="dnd_training"):
        train_tokenizer(cfg)
    expected, why = choose_precision(cfg.train, CPU)
    assert f"training in {expected} ({why}; --set train.precision=bf16|fp32 overrides)" in caplog.text


@pytest.mark.slow
def test_dnd_train_prints_the_choice(tmp_path):
    overrides = ["tokenizer={ch: 8, ch_mult: [1, 2, 2, 2], embed_dim: 8, codebook_size: 16, depth: 2}",
                 "data.height=16", "data.width=64", "data.num_classes=4", "train.batch_size=2", "train.sample_every=0",
                 "train.num_threads=1"]
    proc = subprocess.run([sys.executable, "-c", "from dnd_sdk.cli.main import main; main()", "train", "tokenizer",
                           *sum((["--set", o] for o in overrides), []), "--steps", "1", "--out", str(tmp_path / "t")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    chosen, why = choose_precision(TrainConfig(), CPU)
    assert f"training in {chosen} ({why}; --set train.precision=bf16|fp32 overrides)" in proc.stderr
