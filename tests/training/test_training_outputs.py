"""What a run shows a person: loss.png beside log.jsonl, TensorBoard scalars on request, titled sample grids."""
import json
import logging
import sys

import pytest
from PIL import Image

from dnd_training.config import load_config
from dnd_training.loss_plot import COLOURS, MARGIN, SIZE, draw_loss_plot
from dnd_training.train_tokenizer import TokenizerRunConfig, train_tokenizer


def tokenizer_cfg(out, *extra):
    return load_config(TokenizerRunConfig, None, [
        "tokenizer={ch: 8, ch_mult: [1, 2, 2, 2], embed_dim: 8, codebook_size: 16, depth: 2}", "data.height=16",
        "data.width=64", "data.num_classes=4", "train.steps=4", "train.batch_size=4", "train.log_every=1",
        "train.ckpt_every=2", "train.sample_every=2", "train.num_threads=1", "train.precision=fp32",
        f"train.out_dir={out}", *extra])


def near(image, xy, colour, radius=2) -> bool:
    x, y = (round(v) for v in xy)
    rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return any(image.getpixel((x + dx, y + dy)) == rgb for dx in range(-radius, radius + 1)
               for dy in range(-radius, radius + 1))


def test_the_plot_draws_each_loss_where_it_was():
    records = [{"step": 10, "loss": 4.0, "loss_d0": 1.0}, {"step": 20, "loss": 2.0, "loss_d0": 0.5},
               {"step": 30, "loss": 1.0, "loss_d0": 0.25}]
    image = draw_loss_plot(records)
    left, top, right, bottom = MARGIN[0], MARGIN[1], SIZE[0] - MARGIN[2], SIZE[1] - MARGIN[3]
    assert image.size == SIZE
    assert near(image, (left, top), COLOURS[0])  # the first loss, the highest value, at the top left
    assert near(image, (right, bottom - (bottom - top) / 4), COLOURS[0])  # 1.0 of 0..4 at the last step
    assert near(image, (left, bottom - (bottom - top) / 4), COLOURS[1])  # loss_d0 starts at 1.0
    assert not near(image, ((left + right) / 2, top + 5), COLOURS[0], radius=3)  # nothing drawn where no loss was


def test_a_run_writes_loss_png_and_titled_grids(tmp_path):
    train_tokenizer(tokenizer_cfg(tmp_path / "tok"))
    records = [json.loads(line) for line in (tmp_path / "tok" / "log.jsonl").read_text().splitlines()]
    plot = Image.open(tmp_path / "tok" / "loss.png")
    assert plot.size == SIZE and plot.convert("RGB").tobytes() == draw_loss_plot(records).tobytes()
    grid = Image.open(tmp_path / "tok" / "samples" / "step0000004.png").convert("RGB")
    header = grid.crop((2, 2, 2 + 64, 2 + 13))  # the title strip above the first column: "original"
    assert {header.getpixel((x, y)) for x in range(64) for y in range(13)} > {(255, 255, 255)}  # text on white


def test_tensorboard_gets_the_logged_scalars(tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard is optional: pip install tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    train_tokenizer(tokenizer_cfg(tmp_path / "tok", "train.tensorboard=true"))
    records = [json.loads(line) for line in (tmp_path / "tok" / "log.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "tok" / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("loss")]
    assert logged == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in records]


def test_without_tensorboard_the_run_says_so_and_goes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as where the package is not installed
    with caplog.at_level(logging.WARNING, logger="dnd_training"):
        train_tokenizer(tokenizer_cfg(tmp_path / "tok", "train.tensorboard=true"))
    assert "pip install tensorboard" in caplog.text
    assert (tmp_path / "tok" / "tokenizer.pt").is_file() and not (tmp_path / "tok" / "tensorboard").exists()
