"""`python -m dnd_bench.kernels`: the stage MatMul kernels side by side, on the tiny preset."""
import numpy as np
import onnxruntime as ort
from click.testing import CliRunner

from dnd_bench.kernels import KERNELS, kernel_graph, kernel_table, main, stage0_shapes
from dnd_training.model import MODEL_CONFIGS, ModelArgs

TINY = ModelArgs(**MODEL_CONFIGS["tiny"])


def test_every_kernel_computes_the_same_products_as_float32():
    shapes = stage0_shapes(TINY)
    assert len(shapes) == 5 * (TINY.pred_head_positions[0] + 1) + 1 and shapes[-1] == (TINY.dim, TINY.vocab_size)
    outputs = {}
    for kernel in KERNELS:
        session = ort.InferenceSession(kernel_graph(kernel, shapes).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        feeds = {i.name: np.random.default_rng(1).standard_normal((3, i.shape[1])).astype(np.float32)
                 for i in session.get_inputs()}
        outputs[kernel.name] = session.run(None, feeds)
    for name, ys in outputs.items():  # the same weights in every form: close to float32, not equal
        for y, exact in zip(ys, outputs["fp32"]):
            error = np.abs(y - exact).max() / np.abs(exact).max()
            assert error < (0.25 if "nbits4" in name else 0.05), (name, error)


def test_the_table_times_each_kernel_at_each_row_count():
    table = kernel_table(TINY, [1, 2], repeats=1)
    assert [row["kernel"] for row in table] == [k.name for k in KERNELS]
    for row in table:
        assert set(row["ms"]) == {1, 2} and min(row["ms"].values()) > 0 and row["weight_mb"] > 0
    by_name = {row["kernel"]: row for row in table}
    assert by_name["int8"]["weight_mb"] < by_name["fp32"]["weight_mb"] / 3
    # the forms the exporter writes: float and int8 rows never depend on the rows beside them
    assert by_name["fp32"]["row_alone_is_the_same"] and by_name["int8"]["row_alone_is_the_same"]


def test_the_command_prints_a_line_per_kernel():
    result = CliRunner().invoke(main, ["--preset", "tiny", "--rows", "1", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    assert "stage 0 of tiny: 11 weight products" in result.output
    assert all(f" {k.name} " in result.output for k in KERNELS)
