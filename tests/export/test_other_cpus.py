"""Quantized folders on another kind of CPU: AVX2 without AVX-512 or VNNI, emulated by qemu-user.

A folder is exported once and deployed on other machines, so its bounds must hold on every x86-64
CPU, not only on the one that runs the suite. qemu-user runs ONNX Runtime with the CPUID of an
AVX2-only EPYC, so its kernel dispatch picks the AVX2 integer kernels (avx2_check.py proves it).
"""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dnd_export import export_model
from dnd_sdk import Generator

QEMU = shutil.which("qemu-x86_64")
pytestmark = [pytest.mark.skipif(QEMU is None, reason="needs qemu-user (apt-get install qemu-user) to emulate AVX2"),
              pytest.mark.slow]  # a minute under emulation


@pytest.fixture(scope="module")
def avx2(tiny_checkpoint, tiny_model_dir, tmp_path_factory):
    """(results of avx2_check.py on an emulated AVX2 CPU, {dtype: folder} of the quantized folders)."""
    tmp = tmp_path_factory.mktemp("avx2")
    folders = {"int8": export_model(tiny_checkpoint, tmp / "int8", dtype="int8"),
               **{dtype: export_model(tiny_checkpoint, tmp / dtype, dtype=dtype, decoder_dtype="fp32")
                  for dtype in ("int4", "int4-int8")}}
    script = Path(__file__).with_name("avx2_check.py")
    run = subprocess.run([QEMU, "-cpu", "EPYC-Rome", sys.executable, str(script), str(tiny_model_dir),
                          *map(str, folders.values()), str(tmp / "out.npz")], capture_output=True, text=True, timeout=600)
    errors = [line for line in run.stderr.splitlines() if not line.startswith("qemu-x86_64: warning")]
    assert run.returncode == 0, "\n".join(errors[-20:])
    return dict(np.load(tmp / "out.npz")), folders


@pytest.mark.parametrize("dtype", ["int8", "int4", "int4-int8"])
def test_an_image_does_not_depend_on_its_batch_on_avx2(avx2, dtype):
    results, _ = avx2
    assert results[f"{dtype}_rows_that_depend_on_their_batch"].tolist() == []
    assert np.array_equal(results[f"{dtype}_alone"], results[f"{dtype}_together"])


def test_quantized_folders_sample_the_same_codes_on_avx2_as_here(avx2):
    results, folders = avx2
    for dtype, folder in folders.items():
        with Generator(folder, threads=1) as gen:
            assert np.array_equal(gen.sample_codes(num=6, seed=0, cfg_scale=1.0), results[f"{dtype}_together"]), dtype


def test_4bit_matmuls_do_not_saturate_on_avx2(avx2):
    results, _ = avx2
    assert results["nbits_extremes_exact"]


def test_the_int8_decoder_keeps_its_psnr_on_avx2(avx2):
    results, _ = avx2
    error = results["float_images"].astype(np.float64) - results["int8_images"]
    psnr = 10 * np.log10(255 ** 2 / np.mean(error ** 2))
    assert psnr >= 30, psnr
