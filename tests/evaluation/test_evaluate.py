"""`dnd eval ocr` on the dataset, a tokenizer, a model folder and a `dnd generate` folder, with real tesseract."""
import json
import re

import pytest
from click.testing import CliRunner

from dnd_eval.evaluate import eval_dataset, eval_images, eval_model, eval_tokenizer
from dnd_sdk.cli.main import cli
from system_tools import needs_dejavu, needs_tesseract


@needs_tesseract
@needs_dejavu
def test_clean_dataset_reads_almost_perfectly():
    result = eval_dataset(num_classes=6, per_class=2)
    assert result["count"] == 12 and result["accuracy"] >= 0.9 and result["cer"] < 0.05


@needs_tesseract
def test_untrained_tokenizer_reconstructions_are_not_read(tiny_checkpoint):
    # the tiny test tokenizer has a 16x32 canvas: render words at that size through its labels
    result = eval_tokenizer(tiny_checkpoint, labels=["a", "b"], per_class=2)
    assert result["count"] == 4 and result["kind"] == "reconstructed"
    assert result["psnr"] < 20 and result["accuracy"] < 1.0


@needs_tesseract
def test_tokenizer_can_be_judged_on_other_words(tiny_checkpoint, tmp_path):
    runner = CliRunner()
    own = runner.invoke(cli, ["eval", "ocr", str(tiny_checkpoint), "--per-class", "1", "-o", str(tmp_path / "own.json")])
    assert own.exit_code == 0, own.output  # by default a checkpoint's own classes
    assert [e["label"] for e in json.loads((tmp_path / "own.json").read_text())["images"]] == ["cat", "dog", "bird", "fish"]
    three = runner.invoke(cli, ["eval", "ocr", str(tiny_checkpoint), "--per-class", "1", "--num-classes", "3",
                                "-o", str(tmp_path / "r.json")])
    assert three.exit_code == 0, three.output
    assert [e["label"] for e in json.loads((tmp_path / "r.json").read_text())["images"]] == ["apple", "house", "water"]
    too_many = runner.invoke(cli, ["eval", "ocr", str(tiny_checkpoint), "--num-classes", "100000"])
    assert too_many.exit_code == 1 and "num_classes=100000" in too_many.output
    folder = runner.invoke(cli, ["eval", "ocr", str(tmp_path), "--num-classes", "3"])  # judged on its own classes
    assert folder.exit_code == 2 and "--num-classes does not apply to an image folder" in folder.output


@needs_tesseract
def test_model_folder_and_generated_folder_agree(tiny_model_dir, tmp_path):
    direct = eval_model(tiny_model_dir, per_class=1, seed=3)
    assert direct["count"] == 4 and direct["sampling"]["cfg_scale"] == 2.0
    out = tmp_path / "samples"
    runner = CliRunner()
    assert runner.invoke(cli, ["generate", str(tiny_model_dir), "--per-class", "1", "--seed", "3",
                               "--out", str(out), "--quiet"]).exit_code == 0
    from_folder = eval_images(out)
    strip = lambda rows: [(r["label"], r["read"]) for r in rows]  # noqa: E731
    assert strip(from_folder["images"]) == strip(direct["images"])  # the same pixels read the same
    cli_run = runner.invoke(cli, ["eval", "ocr", str(out), "-o", str(tmp_path / "r.json"), "--quiet"])
    assert cli_run.exit_code == 0, cli_run.output
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["count"] == 4 and result["images"][2]["png"] == str(out / "000002.png")
    assert result["images"][2]["index"] == 2 and result["images"][2]["label"] == "bird"
    # stdout holds a summary, not the JSON
    lines = cli_run.output.splitlines()
    assert lines[0].startswith("images: exact match ") and lines[1].startswith("weakest:  ")
    assert lines[2] == f"per-image results: {tmp_path / 'r.json'}" and len(lines) == 3


@needs_tesseract
def test_model_eval_can_keep_the_images_it_judged(tiny_model_dir, tmp_path):
    result = CliRunner().invoke(cli, ["eval", "ocr", str(tiny_model_dir), "--per-class", "1", "--save-images",
                                      str(tmp_path / "judged"), "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "r.json").read_text())["images"]
    assert [r["png"] for r in rows] == [str(tmp_path / "judged" / f"{i:06d}.png") for i in range(4)]
    assert all((tmp_path / "judged" / f"{i:06d}.png").is_file() for i in range(4))


def test_eval_without_target_is_a_clean_error():
    result = CliRunner().invoke(cli, ["eval", "ocr"])
    assert result.exit_code == 1 and "give a TARGET" in result.output


@needs_tesseract
def test_sweep_scores_every_setting_on_the_same_images(tiny_model_dir, tmp_path):
    result = CliRunner().invoke(cli, ["eval", "sweep", str(tiny_model_dir), "--cfg-scale", "1", "--cfg-scale", "2",
                                      "--temperature", "0", "--per-class", "1", "-o", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "s.json").read_text())
    assert sorted((r["cfg_scale"], r["temperature"]) for r in rows) == [(1.0, 0.0), (2.0, 0.0)]
    assert all(r["count"] == 4 for r in rows) and rows[0]["accuracy"] >= rows[1]["accuracy"]
    assert "best: dnd train set-defaults" in result.output


@pytest.mark.parametrize("target, args, message", [
    ("images", ["--per-class", "0"], "Invalid value for '--per-class': 0 is not in the range x>=1"),
    ("images", ["--per-class", "2"], "--per-class does not apply to an image folder; it applies to a model folder"),
    ("images", ["--seed", "3"], "--seed does not apply to an image folder"),
    ("model", ["--depth", "1"], "--depth does not apply to a model folder; it applies to a tokenizer"),
    ("model", ["--num-classes", "8"], "--num-classes does not apply to a model folder"),
    ("tokenizer", ["--cfg-scale", "2"], "--cfg-scale does not apply to a tokenizer; it applies to a model folder"),
    (None, ["--dataset", "--threads", "2"], "--threads does not apply to --dataset"),
])
def test_a_flag_that_does_not_apply_is_refused(tiny_model_dir, tiny_checkpoint, tmp_path, target, args, message):
    (tmp_path / "images").mkdir()
    path = {"images": tmp_path / "images", "model": tiny_model_dir, "tokenizer": tiny_checkpoint, None: None}[target]
    result = CliRunner().invoke(cli, ["eval", "ocr", *([str(path)] if path else []), *args, "--quiet"])
    assert result.exit_code == 2 and message in result.output, result.output


def _generated(tiny_model_dir, tmp_path):
    out = tmp_path / "samples"
    result = CliRunner().invoke(cli, ["generate", str(tiny_model_dir), "--num", "2", "--threads", "1", "--out",
                                      str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def _edit_metadata(out, edit):
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    edit(rows)
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _cut_png(out):
    data = (out / "000001.png").read_bytes()
    (out / "000001.png").write_bytes(data[:len(data) // 2])


def _fifo_metadata(out):
    import os

    (out / "metadata.jsonl").unlink()
    os.mkfifo(out / "metadata.jsonl")  # reading it would wait for a writer for ever


@pytest.mark.parametrize("damage, fragment", [
    (lambda out: _edit_metadata(out, lambda rows: rows[1].update(index="1")), "metadata.jsonl: line 2 is not a row"),
    (lambda out: _edit_metadata(out, lambda rows: rows[0].update(label_name=3)), "metadata.jsonl: line 1 is not a row"),
    (lambda out: (out / "metadata.jsonl").write_text('{"index": 0, "label_name": "cat"}\n{oops\n'),
     "metadata.jsonl: line 2 is not a row"),
    (_cut_png, r"000001.png: not a readable image \(OSError\)"),
    (_fifo_metadata, "metadata.jsonl is a FIFO, not a file this command wrote"),
])
def test_a_damaged_generate_folder_is_one_line_naming_the_file(tiny_model_dir, tmp_path, damage, fragment):
    out = _generated(tiny_model_dir, tmp_path)
    damage(out)
    result = CliRunner().invoke(cli, ["eval", "ocr", str(out), "--quiet"])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert re.search(fragment, result.output) and "rerun `dnd generate`" in result.output, result.output


def test_saved_images_never_replace_files_already_there(tiny_model_dir, tmp_path):
    import shutil

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    out = _generated(model, tmp_path)  # a generate run whose 000000.png the judged images would replace
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for target, fragment in ((out, f"{out} is not empty; the judged images go to a new or empty folder"),
                             (model / "judged", "lies inside the model folder")):
        result = CliRunner().invoke(cli, ["eval", "ocr", str(model), "--per-class", "1", "--save-images",
                                          str(target), "--quiet"])
        assert result.exit_code == 1 and fragment in result.output and result.output.count("\n") == 1, result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not (model / "judged").exists()
