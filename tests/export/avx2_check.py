"""Run by test_other_cpus.py under `qemu-x86_64 -cpu EPYC-Rome`: an AVX2 CPU without AVX-512 or VNNI.

    python avx2_check.py FP32_DIR INT8_DIR INT4_DIR INT4_INT8_DIR OUT.npz

Proves first that ONNX Runtime took its AVX2 integer kernels (they saturate a pair of large u8 x s8
products), then writes what the quantized folders give here: the rows whose logits depend on
their batch, each folder's codes sampled one image at a time and six at once, whether 4-bit MatMulNBits
adds its extreme products exactly, and the int8 decoder's images beside the float decoder's.
"""
import sys

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from dnd_sdk import Generator
from export_helpers import nbits_extremes_exact, rows_that_depend_on_their_batch


def pair_saturates() -> bool:
    """True where u8 x s8 products are added in pairs in 16-bit lanes (vpmaddubsw: no VNNI)."""
    k = 64
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "pair",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])],
        [numpy_helper.from_array(np.full((k, 1), 127, np.int8), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return int(session.run(None, {"a": np.full((1, k), 255, np.uint8)})[0][0, 0]) != 255 * 127 * k


def main(fp32_dir, int8_dir, int4_dir, mixed_dir, out):
    assert pair_saturates(), "this CPU adds u8 x s8 products without saturating: not the AVX2 kernels"
    results = {"nbits_extremes_exact": np.array(nbits_extremes_exact())}
    for name, folder in (("int8", int8_dir), ("int4", int4_dir), ("int4-int8", mixed_dir)):
        results[f"{name}_rows_that_depend_on_their_batch"] = np.array(rows_that_depend_on_their_batch(folder))
        with Generator(folder, threads=1) as gen:  # without guidance, an image alone is one row
            results[f"{name}_together"] = gen.sample_codes(num=6, seed=0, cfg_scale=1.0)
            results[f"{name}_alone"] = gen.sample_codes(num=6, seed=0, cfg_scale=1.0, batch_size=1)
    with Generator(fp32_dir, threads=1) as fp32, Generator(int8_dir, threads=1) as int8:
        codes = results["int8_together"]
        results["float_images"] = np.stack([np.asarray(im) for im in fp32.decode(codes)])
        results["int8_images"] = np.stack([np.asarray(im) for im in int8.decode(codes)])
    np.savez(out, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
