"""Skip marks for tests that need system packages (`make system-deps` installs both), so a machine
without them reports a skip that names the package instead of failing with a file error."""
import shutil

import pytest

from dnd_training.data import DEJAVU_DIR

DEJAVU_SANS = DEJAVU_DIR / "DejaVuSans.ttf"
needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None,
                                     reason="the tesseract binary is not installed (apt-get install tesseract-ocr "
                                            "tesseract-ocr-eng, or make system-deps)")
needs_dejavu = pytest.mark.skipif(not DEJAVU_SANS.is_file(),
                                  reason=f"no {DEJAVU_SANS} (apt-get install fonts-dejavu-core, or make system-deps)")
