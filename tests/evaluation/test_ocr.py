"""OCR judging: real tesseract on rendered words, exact match and character error rate."""
import pytest
from PIL import Image, ImageDraw, ImageFont

from dnd_eval.ocr import edit_distance, read_words, score
from system_tools import DEJAVU_SANS, needs_dejavu, needs_tesseract


@pytest.mark.parametrize("a, b, d", [("", "", 0), ("cat", "cat", 0), ("cat", "cut", 1), ("cat", "", 3),
                                     ("kitten", "sitting", 3), ("flaw", "lawn", 2)])
def test_edit_distance(a, b, d):
    assert edit_distance(a, b) == d == edit_distance(b, a)


def test_score_counts_exact_matches_per_class_and_cer():
    s = score(["cat", "dgo", "dog", ""], ["cat", "dog", "dog", "cat"])
    assert s.accuracy == 0.5 and s.count == 4
    assert s.per_class == {"cat": 0.5, "dog": 0.5}
    assert s.cer == pytest.approx((0 + 2 + 0 + 3) / 12)


@needs_tesseract
@needs_dejavu
def test_tesseract_reads_clean_rendered_words_and_not_a_blank_image():
    font = ImageFont.truetype(str(DEJAVU_SANS), 18)
    words = ["house", "water", "green"]
    images = []
    for w in words:
        im = Image.new("RGB", (128, 32), "white")
        ImageDraw.Draw(im).text((64, 16), w, fill="black", font=font, anchor="mm")
        images.append(im)
    images.append(Image.new("RGB", (128, 32), "white"))
    read = read_words(images)
    assert read[:3] == words and read[3] != "house"
