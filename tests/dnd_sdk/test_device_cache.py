"""The GPU backends' device cache (dnd_sdk/backends/device_cache.py), without a device.

What a stage call does is a pure function of the layout and the rows: which buffers the graph is
bound to, which copies cross the bus, and the one launch that writes new rows. Here that plan is
executed on host memory (copies as memmove, the launch as its numpy reference) through a real
ONNX Runtime CPU session, and compared with the ONNX Runtime CPU backend's own numpy path. The
kernel itself runs in tests/engines/test_gpu.py, against the same reference.
"""
import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from dnd_sdk import Generator
from dnd_sdk.backends.device_cache import (
    ALIGN,
    KERNEL_NAME,
    KERNEL_SOURCE,
    CacheLayout,
    CacheTensor,
    DeviceCache,
    StepTensor,
    host_memory,
    write_new_rows_reference,
)
from dnd_sdk.backends.onnxrt import bind_to_addresses


def xxl_like_layout(layers: int, rows: int = 64) -> CacheLayout:
    """One stage of `layers` layers shaped like the ImageNet GPT-XXL in fp16 (24 KV heads, head dim 64, L 256)."""
    tensors = [CacheTensor(f"past_key_values.{i}.{kind}", f"new_key_values.{i}.{kind}", "float16", 24, 64)
               for i in range(layers) for kind in ("key", "value")]
    inputs = [StepTensor("hidden", "float32", (1, 1536)), StepTensor("positions", "int64", ()),
              StepTensor("kv_mask", "bool", (256,))]
    outputs = [StepTensor("logits", "float32", (16384,)), StepTensor("hidden_out", "float32", (1, 1536))]
    return CacheLayout([tensors], inputs, outputs, rows, 256)


class CallLog:
    """Stands for CudaRuntime only to list the calls DeviceCache makes; it touches no memory."""

    def __init__(self):
        self.calls = []

    def malloc(self, nbytes):
        self.calls.append("malloc")
        return 1 << 40

    def launch(self, kernel, launch, stream):
        self.calls.append(("launch", launch.grid))

    def __getattr__(self, name):  # copy_to_device, copy_to_host, zero, synchronize, free
        return lambda *args: self.calls.append(name)


def step_inputs(layout: CacheLayout, rows: int, positions) -> dict:
    positions = np.asarray(positions, np.int64)
    return {"hidden": np.zeros((rows, 1, 1536), np.float32), "positions": positions,
            "kv_mask": np.arange(layout.length)[None, :] < positions[:, None]}


@pytest.mark.parametrize("layers", [2, 48])
@pytest.mark.parametrize("positions", ["all at one position", "all at different positions"])
def test_a_stage_call_makes_seven_cuda_calls_whatever_the_layers_and_positions(layers, positions):
    layout, log = xxl_like_layout(layers), CallLog()
    cache = DeviceCache(log, layout, stream=None, kernel=None)
    assert log.calls == ["malloc", "copy_to_device", "zero", "synchronize"]  # one table upload, one memset
    log.calls.clear()
    at = np.full(64, 7) if positions == "all at one position" else np.arange(64) * 3 % 256
    ran = []
    cache.stage_call(0, step_inputs(layout, 64, at), lambda: ran.append(log.calls[:]))
    assert ran == [["copy_to_device"] * 3]  # the graph runs once its inputs are on their way
    blocks = 64 * 24 * 64 // 256  # 16-bit units of every row's new key (or value), 256 threads a block
    assert log.calls == ["copy_to_device"] * 3 + [("launch", (blocks, 2 * layers, 1))] + ["copy_to_host"] * 2 + \
        ["synchronize"]


def test_only_the_step_tensors_cross_the_bus():
    layout, log = xxl_like_layout(48), CallLog()
    cache = DeviceCache(log, layout, stream=None, kernel=None)
    for rows in (1, 64):
        cache.bytes_to_device = cache.bytes_to_host = 0
        cache.stage_call(0, step_inputs(layout, rows, np.arange(rows)), lambda: None)
        # hidden fp32 + position int64 + mask of L bools in; logits and hidden state fp32 out
        assert cache.bytes_to_device == rows * (1536 * 4 + 8 + 256)
        assert cache.bytes_to_host == rows * (16384 + 1536) * 4
        assert layout.step_bytes(rows) == (cache.bytes_to_device, cache.bytes_to_host)
    # the cache of these 48 layers is 75 MB per row; a step moves 0.08 MB per row
    assert layout.cache_bytes == 64 * 48 * 2 * 24 * 256 * 64 * 2
    assert sum(layout.step_bytes(64)) * 900 < layout.cache_bytes


def test_the_launch_grid_is_bounded_and_covers_every_new_row():
    layout = xxl_like_layout(2, rows=4096)
    for rows, blocks in ((1, 6), (64, 384), (4096, 1024)):  # 1024: the rest by the kernel's grid-stride loop
        launch = layout.launch(0, rows, base=0)
        assert launch.grid == (blocks, 4, 1) and launch.block == (256, 1, 1) and launch.rows == rows
    values, addresses = layout.launch(0, 3, base=1 << 32).arguments()
    assert [int(v[0]) for v in values] == [(1 << 32) + layout.table_offsets[0], (1 << 32) + layout.step_offsets[
        "positions"], 3, 256]
    assert list(addresses) == [v.ctypes.data for v in values]


def test_the_kernel_writes_each_row_into_its_own_slot_only():
    tensors = [CacheTensor("past.0", "new.0", "float32", 2, 4), CacheTensor("past.1", "new.1", "float16", 3, 8)]
    layout = CacheLayout([tensors], [StepTensor("positions", "int64", ())], [], max_rows=4, length=6)
    memory, base = host_memory(layout)
    positions = np.array([3, 0, 3], np.int64)
    ctypes.memmove(base + layout.step_offsets["positions"], positions.ctypes.data, positions.nbytes)
    caches, news = [], []
    for t, c, n in zip(tensors, layout.cache_offsets[0], layout.new_offsets[0]):
        dtype = np.dtype(t.dtype)
        caches.append(memory[c:c + 4 * t.kv_heads * 6 * t.head_bytes].view(dtype).reshape(4, t.kv_heads, 6, t.head_dim))
        news.append(memory[n:n + 3 * t.kv_heads * t.head_bytes].view(dtype).reshape(3, t.kv_heads, 1, t.head_dim))
        news[-1][:] = np.arange(1, news[-1].size + 1).reshape(news[-1].shape)
    write_new_rows_reference(memory, base, layout.launch(0, 3, base))
    for cache, new in zip(caches, news):
        expected = np.zeros_like(cache)
        expected[np.arange(3), :, positions] = new[:, :, 0]
        np.testing.assert_array_equal(cache, expected)  # row 3 beyond the call's rows stays untouched


def test_bindings_are_row_prefixes_of_the_buffers_the_kernel_writes(tiny_model_dir):
    from dnd_sdk.model_folder.manifest import load_manifest
    manifest = load_manifest(tiny_model_dir)
    layout, base = CacheLayout.of(manifest, max_rows=8), 1 << 40
    for k, table in enumerate(layout.tables(base)):
        bound = {b.name: b for b in layout.bindings(k, 3, base)}
        assert set(bound) == {s.name for s in manifest.inputs(f"stage{k}") + manifest.outputs(f"stage{k}")}
        for t, (cache, new, kv_heads, units) in zip(layout.stages[k], table):
            assert (bound[t.past].ptr, bound[t.new].ptr) == (cache, new) and bound[t.past].is_input
            assert bound[t.past].shape == (3, kv_heads, manifest.cache_length, units // 2)  # fp32: 2 units a value
            assert bound[t.new].shape == (3, kv_heads, 1, units // 2) and not bound[t.new].is_input
        assert bound["positions"].ptr == layout.launch(k, 3, base).positions
    spans = sorted((b.ptr, b.ptr + np.prod(b.shape[1:]) * 8 * 4) for k in range(2) for b in layout.bindings(k, 8, base)
                   if b.name.startswith("past"))
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:]))  # no two caches overlap
    assert spans[-1][1] <= base + layout.cache_bytes and all(p % ALIGN == 0 for p, _ in spans)


def run_plan_on_host(backend, layout, memory, base, k, hidden, positions) -> tuple:
    """One stage call as DeviceCache makes it, on host memory: uploads (memmove), the graph through IO binding
    at the layout's addresses, the kernel's numpy reference, downloads (memmove)."""
    rows = len(positions)
    inputs = {"hidden": np.ascontiguousarray(hidden, np.float32), "positions": positions,
              "kv_mask": np.arange(layout.length)[None, :] < positions[:, None]}
    outputs = {s.name: np.empty((rows, *s.shape), np.float32) for s in layout.outputs}
    for copy in layout.uploads(rows, base, inputs):
        ctypes.memmove(copy.dst, copy.src, copy.nbytes)
    session = backend.sessions[f"stage{k}"]
    io = session.io_binding()
    bind_to_addresses(io, layout.bindings(k, rows, base), "cpu")
    session.run_with_iobinding(io)
    write_new_rows_reference(memory, base, layout.launch(k, rows, base))
    for copy in layout.downloads(rows, base, outputs):
        ctypes.memmove(copy.dst, copy.src, copy.nbytes)
    return outputs["logits"], outputs["hidden_out"]


def test_the_device_plan_on_host_memory_matches_the_cpu_backend_exactly(tiny_model_dir):
    """Rows at different positions, one restarting at 0: logits, hidden states and every cache slot equal."""
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1) as gen:
        backend = gen.backend
        layout = CacheLayout.of(backend.manifest, max_rows=4)  # more rows than the calls use: prefixes
        memory, base = host_memory(layout)
        seqs = [np.concatenate([gen.cls_embedding[[label]], gen.tok_embeddings[c].sum(1)]) for label, c in
                zip((1, 3, 0), np.random.default_rng(0).integers(0, gen.vocab_size, (3, 5, 2)))]
        backend.reset(3)
        for c in range(6):  # row 0 runs on; rows 1 and 2 share a position, then row 2 restarts at 0
            positions = np.array([c, c, c % 3], np.int64)
            hidden = np.stack([seqs[0][c], seqs[1][c], seqs[2][c % 3]])[:, None, :]
            plan_hidden = hidden
            for k in range(backend.manifest.depth):
                logits, hidden = (a.copy() for a in backend.stage_step(k, hidden, positions))
                plan_logits, plan_hidden = run_plan_on_host(backend, layout, memory, base, k, plan_hidden, positions)
                np.testing.assert_array_equal(plan_logits, logits)
                np.testing.assert_array_equal(plan_hidden, hidden)
                for offset, (_, _, cache, _) in zip(layout.cache_offsets[k], backend._caches[k]):
                    written = cache[:3]  # the CPU backend's [rows, kv, L, hd] after its own indexed writes
                    on_host = memory[offset:offset + written.nbytes].view(cache.dtype).reshape(written.shape)
                    np.testing.assert_array_equal(on_host, written)
        assert np.abs(memory[:layout.cache_bytes].view(np.float32)).max() > 0  # the caches were really written


# the kernel's own source, compiled for the CPU: CUDA's built-in indices become globals, and a loop runs the grid
CPU_PRELUDE = """
struct Dim3 { unsigned x, y, z; };
static Dim3 blockIdx, blockDim, threadIdx, gridDim;
#define __global__
"""
CPU_GRID = """
extern "C" void run_grid(const unsigned long long* table, const long long* positions, long long rows,
                         long long length, unsigned grid_x, unsigned grid_y, unsigned block_x) {
    gridDim = {grid_x, grid_y, 1};
    blockDim = {block_x, 1, 1};
    for (unsigned y = 0; y < grid_y; ++y)
        for (unsigned x = 0; x < grid_x; ++x)
            for (unsigned t = 0; t < block_x; ++t) {
                blockIdx = {x, y, 0};
                threadIdx = {t, 0, 0};
                %s(table, positions, rows, length);
            }
}
"""


@pytest.fixture(scope="module")
def kernel_on_the_cpu(tmp_path_factory):
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler to run the kernel's source on the CPU")
    folder = tmp_path_factory.mktemp("kernel")
    (folder / "kernel.cpp").write_text(CPU_PRELUDE + KERNEL_SOURCE + CPU_GRID % KERNEL_NAME)
    subprocess.run([compiler, "-O1", "-shared", "-fPIC", "-o", str(folder / "kernel.so"), str(folder / "kernel.cpp")],
                   check=True)
    return ctypes.CDLL(str(folder / "kernel.so")).run_grid


@pytest.mark.parametrize("threads", ["the launch's grid", "one block of 32 (the grid-stride loop does the rest)"])
def test_the_kernel_source_writes_what_its_reference_writes(kernel_on_the_cpu, threads):
    tensors = [CacheTensor(f"past.{i}", f"new.{i}", dtype, kv, hd)
               for i, (dtype, kv, hd) in enumerate([("float32", 2, 8), ("float16", 3, 16), ("bfloat16", 1, 6)])]
    layout = CacheLayout([tensors], [StepTensor("positions", "int64", ())], [], max_rows=5, length=7)
    positions = np.array([6, 0, 3, 3], np.int64)  # 4 of the 5 rows, two at one position
    before = np.random.default_rng(0).integers(0, 256, layout.step_offsets["positions"], np.uint8)  # caches, new rows
    images = []
    for _ in range(2):
        memory, base = host_memory(layout)
        memory[:before.size] = before
        ctypes.memmove(base + layout.step_offsets["positions"], positions.ctypes.data, positions.nbytes)
        images.append((memory, base))
    (kernel_memory, kernel_base), (reference_memory, reference_base) = images
    launch = layout.launch(0, 4, kernel_base)
    grid_x, block_x = (launch.grid[0], launch.block[0]) if threads == "the launch's grid" else (1, 32)
    kernel_on_the_cpu(ctypes.c_uint64(launch.table), ctypes.c_uint64(launch.positions), ctypes.c_int64(4),
                      ctypes.c_int64(7), ctypes.c_uint(grid_x), ctypes.c_uint(launch.grid[1]), ctypes.c_uint(block_x))
    write_new_rows_reference(reference_memory, reference_base, layout.launch(0, 4, reference_base))
    end = layout.cache_bytes
    np.testing.assert_array_equal(kernel_memory[:end], reference_memory[:end])
    assert (kernel_memory[:end] != before[:end]).sum() > 100  # it wrote (4 rows, 6 heads in all, 84 values)
