"""`dnd train set-defaults`: a checkpoint's default sampling, carried through export to the runtime."""
import shutil

import torch
from click.testing import CliRunner

from dnd_sdk import Generator
from dnd_sdk.cli.main import cli
from dnd_training.checkpoint import load_checkpoint


def test_new_defaults_reach_the_manifest_and_keep_the_weights(tiny_checkpoint, tmp_path):
    path = tmp_path / "checkpoint.pt"
    shutil.copy(tiny_checkpoint, path)
    result = CliRunner().invoke(cli, ["train", "set-defaults", str(path), "--cfg-scale", "1.5", "--temperature", "0.3"])
    assert result.exit_code == 0, result.output
    before, after = load_checkpoint(tiny_checkpoint), load_checkpoint(path)
    # the settings not given keep their old values
    assert after.meta["sampler_defaults"] == {"cfg_scale": 1.5, "temperature": 0.3, "top_k": 0, "top_p": 1.0}
    assert all(torch.equal(v, before.model[k]) for k, v in after.model.items())
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp file left

    from dnd_export import export_model
    with Generator(export_model(path, tmp_path / "model")) as gen:
        assert gen.manifest.sampler_defaults == {"cfg_scale": 1.5, "temperature": 0.3, "top_k": 0, "top_p": 1.0}


def test_bad_defaults_are_refused_and_leave_the_file_alone(make_checkpoint, tmp_path):
    path = make_checkpoint(tmp_path / "unguided.pt", class_dropout_prob=0.0)
    original = path.read_bytes()
    runner = CliRunner()
    negative = runner.invoke(cli, ["train", "set-defaults", str(path), "--temperature", "-1"])
    assert negative.exit_code == 1 and "temperature must be >= 0" in negative.output
    unguided = runner.invoke(cli, ["train", "set-defaults", str(path), "--cfg-scale", "2"])
    assert unguided.exit_code == 1 and "without a null class" in unguided.output
    assert path.read_bytes() == original
