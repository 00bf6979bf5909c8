"""Judge word images with a real OCR engine (tesseract), as in the project's OCR protocol.

Protocol: upscale 3x with bicubic resampling, `tesseract --psm 7` (one text line), and an
image counts as correct when the stripped output equals its class word exactly.
"""
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image
from tqdm import tqdm

from dnd_sdk.errors import DndError


def _require_tesseract():
    try:
        import pytesseract
    except ImportError:
        raise DndError("OCR evaluation needs pytesseract: pip install 'dnd-sdk[eval]'") from None
    if shutil.which("tesseract") is None:
        raise DndError("the tesseract binary is not installed: apt-get install tesseract-ocr tesseract-ocr-eng")
    return pytesseract


def read_words(images, threads: int = 2, progress: bool = False) -> list:
    """OCR each PIL image (one word per image); returns the stripped texts in order. With progress,
    a tqdm bar on stderr (a few hundred images take tens of seconds)."""
    pytesseract = _require_tesseract()

    def read(img: Image.Image) -> str:
        big = img.convert("RGB").resize((img.width * 3, img.height * 3), Image.BICUBIC)
        return pytesseract.image_to_string(big, config="--psm 7").strip()

    with ThreadPoolExecutor(threads) as pool:  # each call is a tesseract process
        return list(tqdm(pool.map(read, images), total=len(images), unit="img", desc="OCR", disable=not progress))


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


@dataclass
class OcrScore:
    accuracy: float  # exact-match fraction
    cer: float  # character error rate: total edit distance / total reference characters
    count: int
    per_class: dict = field(default_factory=dict)  # word -> exact-match fraction

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "cer": self.cer, "count": self.count, "per_class": self.per_class}


def score(predictions, truths) -> OcrScore:
    if len(predictions) != len(truths) or not truths:
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} references")
    hits, per_class = [p == t for p, t in zip(predictions, truths)], {}
    for hit, word in zip(hits, truths):
        per_class.setdefault(word, []).append(hit)
    errors = sum(edit_distance(p, t) for p, t in zip(predictions, truths))
    return OcrScore(
        accuracy=sum(hits) / len(hits),
        cer=errors / max(1, sum(len(t) for t in truths)),
        count=len(hits),
        per_class={w: sum(v) / len(v) for w, v in sorted(per_class.items())},
    )
