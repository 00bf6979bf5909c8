"""Config loading and overrides, LR schedule, data order, optimizer groups, CLI error handling."""
import json
import math
import re

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from dnd_sdk.errors import InvalidInputError
from dnd_training.cli import train
from dnd_training.codes import CodeSet
from dnd_training.config import load_config, save_config
from dnd_training.model import MODEL_CONFIGS, ModelArgs, Transformer
from dnd_training.train_common import TrainConfig, batch_indices, build_optimizer, lr_factor
from dnd_training.train_tokenizer import TokenizerRunConfig
from dnd_training.train_transformer import TransformerRunConfig, build_model_args


def test_yaml_config_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"train": {"steps": 50, "lr": 1e-3}, "codes": {"data": {"num_classes": 4}}}))
    cfg = load_config(TransformerRunConfig, path, ["train.steps=7", "codes.data.words=[cat, dog]",
                                                   "sampler_defaults.cfg_scale=2.5", "model.dim=64"])
    assert cfg.train.steps == 7 and cfg.train.lr == 1e-3 and cfg.train.batch_size == 32
    assert cfg.codes.data.words == ["cat", "dog"] and cfg.codes.data.num_classes == 4
    assert cfg.sampler_defaults.cfg_scale == 2.5 and cfg.sampler_defaults.temperature == 1.0
    assert cfg.model == {"dim": 64}
    save_config(cfg, tmp_path / "resolved.yaml")  # the resolved config reads back to the same object
    assert load_config(TransformerRunConfig, tmp_path / "resolved.yaml") == cfg


def test_json_config(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"tokenizer": {"depth": 2}, "data": {"preset": "varied"}}))
    cfg = load_config(TokenizerRunConfig, path)
    assert cfg.tokenizer == {"depth": 2} and cfg.data.preset == "varied"


@pytest.mark.parametrize("override, message", [
    (["train.stpes=3"], r"unknown config key\(s\) \['train.stpes'\]"),
    (["steps"], "section.key=value"),
    (["train.steps=0"], "train.steps must be a positive integer"),
    (["train.precision=fp8"], "precision"),
    (["data=3"], "must be a mapping"),
])
def test_bad_config_entries_are_named(override, message):
    with pytest.raises(InvalidInputError, match=message):
        load_config(TokenizerRunConfig, None, override)


def test_missing_or_malformed_config_file(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_config(TokenizerRunConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(InvalidInputError, match="not valid YAML"):
        load_config(TokenizerRunConfig, bad)


def test_warmup_then_cosine_to_the_floor():
    cfg = TrainConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    factors = [lr_factor(cfg, s) for s in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(factors[:10], factors[1:10]))  # warmup rises
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # cosine falls
    assert lr_factor(cfg, 60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(cfg, 110) == pytest.approx(0.1)


def test_data_order_is_a_pure_function_of_seed_and_step():
    n, b = 10, 4
    stream = torch.cat([batch_indices(0, s, b, n) for s in range(5)])  # 20 positions = 2 epochs
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:].tolist()) == list(range(10))
    assert not torch.equal(stream[:10], stream[10:])  # each epoch its own shuffle
    assert torch.equal(batch_indices(0, 3, b, n), stream[12:16])  # same answer in any call order
    assert not torch.equal(batch_indices(1, 0, b, n), batch_indices(0, 0, b, n))


def test_weight_decay_only_on_matrices():
    model = Transformer(ModelArgs(**MODEL_CONFIGS["tiny"]))
    opt = build_optimizer(model, TrainConfig(weight_decay=0.05, betas=[0.9, 0.95]))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0 and decay["betas"] == (0.9, 0.95)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_cli_reports_user_errors_without_traceback(tmp_path):
    runner = CliRunner()
    result = runner.invoke(train, ["tokenizer", "--set", "train.nope=1"])
    assert result.exit_code == 1 and "unknown config key" in result.output and "Traceback" not in result.output
    result = runner.invoke(train, ["transformer", "--set", f"codes.path={tmp_path / 'missing.npz'}"])
    assert result.exit_code == 1 and "extract-codes" in result.output
    result = runner.invoke(train, ["--help"])
    assert result.exit_code == 0 and all(c in result.output for c in ("tokenizer", "extract-codes", "transformer"))


def test_numbers_in_any_yaml_spelling():
    # YAML 1.1 reads 3e-4 as a string; the config must still see a float
    cfg = load_config(TokenizerRunConfig, None, ["train.lr=3e-4", "train.steps=20", "train.min_lr_ratio=0"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float) and isinstance(cfg.train.min_lr_ratio, float)
    with pytest.raises(InvalidInputError, match="train.lr must be a number, got 'fast'"):
        load_config(TokenizerRunConfig, None, ["train.lr=fast"])
    with pytest.raises(InvalidInputError, match="train.steps must be an integer"):
        load_config(TokenizerRunConfig, None, ["train.steps=2.5"])


def code_set(depth: int) -> CodeSet:
    return CodeSet(np.zeros((4, 4, 16, depth), np.uint16), np.arange(4), ["a", "b", "c", "d"],
                   {"codebook_size": 512})


@pytest.mark.parametrize("preset", sorted(MODEL_CONFIGS))
def test_every_preset_trains_on_codes_of_any_depth(preset):
    for depth in (1, 2, 4):
        args = build_model_args(load_config(TransformerRunConfig, None, [f"model_preset={preset}"]), code_set(depth))
        assert args.num_pred_heads == depth and len(args.pred_head_positions) == depth
        assert args.pred_head_positions[-1] == args.n_layer - 1  # heads on the last layers, as the presets put them
        assert args.n_layer >= MODEL_CONFIGS[preset]["n_layer"] and args.dim == MODEL_CONFIGS[preset]["dim"]
    tiny = build_model_args(load_config(TransformerRunConfig, None, ["model_preset=tiny"]), code_set(4))
    assert (tiny.n_layer, tiny.pred_head_positions) == (4, [0, 1, 2, 3])  # tiny has 3 layers: one more for 4 heads


def test_head_positions_given_are_kept_or_refused():
    given = load_config(TransformerRunConfig, None, ["model_preset=words", "model.pred_head_positions=[1, 3]"])
    assert build_model_args(given, code_set(2)).pred_head_positions == [1, 3]
    few = load_config(TransformerRunConfig, None, ["model_preset=tiny", "model.n_layer=2"])
    with pytest.raises(InvalidInputError, match="model.n_layer 2 is too few for the code file's 4 depth heads"):
        build_model_args(few, code_set(4))


@pytest.mark.parametrize("override, shown", [
    ("train.steps=.inf", "inf"),  # int() of inf raises OverflowError
    ("train.steps=" + "9" * 5000, "'999999999999999999999999999..."),  # past int()'s digit limit, in YAML too
    ("train.steps=true", "True"),  # a bool is no count
])
def test_a_count_python_cannot_convert_is_a_typed_error(override, shown):
    with pytest.raises(InvalidInputError, match=f"config entry train.steps must be an integer, got {re.escape(shown)}"):
        load_config(TokenizerRunConfig, None, [override])


def test_a_json_config_with_an_integer_past_the_digit_limit_is_a_typed_error(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"train": {"steps": 1' + "0" * 5000 + "}}")
    with pytest.raises(InvalidInputError, match=f"config file {re.escape(str(path))} is not valid JSON"):
        load_config(TokenizerRunConfig, path)
