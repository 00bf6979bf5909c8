"""Word-image rendering and the image-folder dataset."""
import dataclasses
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from dnd_sdk.errors import InvalidInputError
from dnd_training import data
from dnd_training.data import DataConfig, WordImageDataset, build_dataset, load_words
from dnd_training.image_folder import ImageFolderDataset
from dnd_training.pixels import to_image, to_tensor


def ink_box(image: Image.Image, threshold: int = 40):
    """Bounding box (top, bottom, left, right) of pixels that differ from the corner (background) colour."""
    a = np.asarray(image, dtype=np.int16)
    ink = np.abs(a - a[0, 0]).max(-1) > threshold
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    return rows[0], rows[-1], cols[0], cols[-1]


def test_builtin_words_are_many_distinct_lowercase():
    words = load_words()
    assert len(words) >= 100 and len(set(words)) == len(words)
    assert all(w.isalpha() and w == w.lower() for w in words)


@pytest.mark.parametrize("preset", ["clean", "varied"])
def test_rendering_is_a_pure_function_of_seed_and_index(preset):
    a, b = WordImageDataset(load_words(), preset, seed=3, length=50), WordImageDataset(load_words(), preset, seed=3, length=50)
    assert np.array_equal(np.asarray(a.render(17)), np.asarray(b.render(17)))
    assert np.array_equal(np.asarray(a.render(17)), np.asarray(a.render(17)))  # no hidden state between calls
    other_seed = WordImageDataset(load_words(), preset, seed=4, length=50)
    assert not np.array_equal(np.asarray(a.render(17)), np.asarray(other_seed.render(17)))
    image, label = a[17]
    assert image.shape == (3, 32, 128) and label == 17 % len(load_words())
    assert -1.0 <= image.min() < image.max() <= 1.0


@pytest.mark.parametrize("preset", ["clean", "varied"])
def test_every_class_renders_inside_the_canvas(preset):
    words = load_words()
    # pixel noise would trip the ink detector; the geometry is the same without it
    style = dataclasses.replace(data.PRESETS[preset], noise_std=0.0)
    ds = WordImageDataset(words, style, seed=0, length=2 * len(words))
    for i in range(len(ds)):
        image = ds.render(i)
        top, bottom, left, right = ink_box(image)
        assert top > 0 and left > 0 and bottom < 31 and right < 127, (words[i % len(words)], (top, bottom, left, right))
        # a few pixels of ink would be a missing or unreadably small word (x-height words like "snow" are ~7 px)
        assert bottom - top >= 6 and right - left >= 2 * len(words[i % len(words)]), words[i % len(words)]


def test_clean_preset_is_black_on_white_and_centred():
    ds = WordImageDataset(["house"], "clean", seed=0, length=20)
    centres = []
    for i in range(20):
        a = np.asarray(ds.render(i))
        assert a.min() == 0 and tuple(a[0, 0]) == (255, 255, 255)
        top, bottom, left, right = ink_box(ds.render(i))
        centres.append(((left + right) / 2, (top + bottom) / 2))
    cx, cy = np.array(centres).T
    assert np.all(np.abs(cx - 64) <= 4) and np.all(np.abs(cy - 16) <= 4)  # +-2 px jitter plus glyph asymmetry


def test_style_overrides_change_the_preset():
    plain = build_dataset(DataConfig(num_classes=2, length=4))
    rotated = build_dataset(DataConfig(num_classes=2, length=4, style={"max_rotation": 8.0, "noise_std": 0.05}))
    assert rotated.style.max_rotation == 8.0 and rotated.style.fonts == plain.style.fonts
    a = np.asarray(rotated.render(0), dtype=np.int16)
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 100  # noise: far more colours than black-on-white
    assert not np.array_equal(a, np.asarray(plain.render(0)))


def test_long_word_shrinks_to_fit_and_other_sizes_work():
    ds = WordImageDataset(["extraordinarily"], "clean", seed=0, height=32, width=128)
    top, bottom, left, right = ink_box(ds.render(0))
    assert left > 0 and right < 127
    small = WordImageDataset(["cat"], "clean", seed=0, height=16, width=64)
    assert small[0][0].shape == (3, 16, 64)


def test_falls_back_to_pillow_font_without_dejavu(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "DEJAVU_DIR", tmp_path)  # no font files there
    data._font.cache_clear()
    try:
        image = WordImageDataset(["ocean"], "clean", seed=0).render(0)
        top, bottom, left, right = ink_box(image)
        assert 0 < left < right < 127 and bottom - top >= 8
    finally:
        data._font.cache_clear()


def test_tensor_image_round_trip():
    image = WordImageDataset(["tiger"], "varied", seed=1).render(0)
    back = np.asarray(to_image(to_tensor(image)), dtype=np.int16)
    # to_image floors like the exported decoder, so float rounding may cost one level, never more
    diff = np.asarray(image, dtype=np.int16) - back
    assert diff.min() >= 0 and diff.max() <= 1 and (diff == 0).mean() > 0.5


def test_word_list_errors_say_what_to_do(tmp_path):
    with pytest.raises(InvalidInputError, match="num_classes=500"):
        load_words(num_classes=500)
    with pytest.raises(InvalidInputError, match="repeats"):
        load_words(["cat", "dog", "cat"])
    f = tmp_path / "w.txt"
    f.write_text("alpha\nbeta\n\ngamma\n")
    assert load_words(words_file=f) == ["alpha", "beta", "gamma"]
    with pytest.raises(InvalidInputError, match="preset"):
        WordImageDataset(["cat"], "fancy")
    with pytest.raises(InvalidInputError, match="data.root"):
        build_dataset(DataConfig(kind="folder"))
    with pytest.raises(InvalidInputError, match="data.style"):
        build_dataset(DataConfig(style={"wobble": 1}))
    with pytest.raises(InvalidInputError, match="data.preset"):
        build_dataset(DataConfig(preset="fancy"))
    with pytest.raises(InvalidInputError, match="data.kind"):
        build_dataset(DataConfig(kind="video"))


def _folder(tmp_path):
    for name, colour in (("blue", (0, 0, 255)), ("red", (255, 0, 0))):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("RGB", (40 + i, 20), colour).save(tmp_path / name / f"{i}.png")
    Image.new("RGB", (10, 10), (0, 255, 0)).save(tmp_path / "red" / "x.jpg")
    return tmp_path


def test_image_folder_reads_classes_from_subfolders(tmp_path):
    ds = build_dataset(DataConfig(kind="folder", root=str(_folder(tmp_path)), height=16, width=32))
    assert ds.labels == ["blue", "red"] and len(ds) == 5
    image, label = ds[0]
    assert image.shape == (3, 16, 32) and label == 0
    assert torch.allclose(image[2], torch.ones(16, 32)) and torch.allclose(image[0], -torch.ones(16, 32))


def test_image_folder_skips_corrupt_files_with_a_warning(tmp_path, caplog):
    root = _folder(tmp_path)
    (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    truncated = (root / "blue" / "0.png").read_bytes()
    (root / "blue" / "cut.png").write_bytes(truncated[: len(truncated) // 2])
    with caplog.at_level(logging.WARNING):
        ds = ImageFolderDataset(root, 16, 32)
    assert len(ds) == 5  # the 5 good images, not the 2 broken ones
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "broken.png" in warned and "cut.png" in warned
    assert all(ds[i][0].shape == (3, 16, 32) for i in range(len(ds)))


def test_image_folder_survives_a_file_that_breaks_mid_epoch(tmp_path, caplog):
    root = _folder(tmp_path)
    ds = ImageFolderDataset(root, 16, 32)
    (root / "blue" / "1.png").write_bytes(b"gone bad")  # index 1 fails only when read
    with caplog.at_level(logging.WARNING):
        image, label = ds[1]
    assert label == 1 and image.shape == (3, 16, 32)  # replaced by the next readable file (red/0.png)
    assert "1.png" in " ".join(r.getMessage() for r in caplog.records)


def test_image_folder_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope")
    with pytest.raises(InvalidInputError, match="no sub-folders"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.png").write_bytes(b"junk")
    with pytest.raises(InvalidInputError, match="no readable images"):
        ImageFolderDataset(tmp_path)
