"""`threads` is a small non-negative int or None, whichever backend runs: never truncated, never handed
raw to ONNX Runtime."""
import pytest

from dnd_sdk import Generator
from dnd_sdk.errors import InvalidInputError


@pytest.mark.parametrize("threads", [10**12, 1025, -1, 2.5, True, "2"])
@pytest.mark.parametrize("backend", ["auto", "onnxruntime-cpu"])
def test_threads_outside_a_sane_int_range_are_refused(tiny_model_dir, backend, threads):
    with pytest.raises(InvalidInputError, match=r"threads must be an integer in \[0, 1024\], got") as e:
        Generator(tiny_model_dir, backend, threads=threads)
    assert e.value.names == ("threads",)


def test_threads_zero_lets_onnx_runtime_choose(tiny_model_dir):
    with Generator(tiny_model_dir, "onnxruntime-cpu", threads=0) as gen:
        assert gen.sample_codes(num=1, seed=0).shape == (1, 2, 4, 2)
