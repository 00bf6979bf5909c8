"""The KV cache on the GPU: one mechanism for the ONNX Runtime CUDA and TensorRT backends.

A stage call moves only the step's small tensors across the bus; the cache stays on the device:

    layout = CacheLayout.of(manifest, max_rows)        # where every buffer lives: plain arithmetic
    kernel = cuda.compile(KERNEL_SOURCE, KERNEL_NAME)   # NVRTC, once per backend
    cache = DeviceCache(cuda, layout, stream, kernel)  # one cudaMalloc; the pointer tables uploaded once
    cache.reset()                                      # one cudaMemsetAsync over every stage's cache
    for b in layout.bindings(k, rows, cache.base): ... # the backend binds each graph tensor to its address
    logits, hidden_out = cache.stage_call(k, inputs, run_graph)

`stage_call` uploads hidden state, positions and mask (3 copies), runs the graph, writes every new
key/value row of the stage into its row's slot with one kernel launch, downloads logits and hidden
state (2 copies) and waits for the stream (1 call): 7 CUDA calls whatever the number of layers and
however many different positions the rows are at. The kernel reads each row's position from the
positions buffer the call already uploaded, and finds every cache tensor of the stage through a
pointer table uploaded once per allocation, so nothing about the rows' positions reaches the host side
of the launch: its grid depends only on the number of rows and the stage's tensor shapes.

Everything here but `DeviceCache` is a pure function of the manifest, the rows and an address, so it
is tested without a GPU (tests/dnd_sdk/test_device_cache.py): `write_new_rows_reference` is the
kernel in numpy, checked against the ONNX Runtime CPU backend's own cache writes and against the
kernel's source compiled for the CPU.
"""
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from ..errors import ManifestError

ALIGN = 256  # bytes between buffers: cudaMalloc's own alignment, so every buffer is aligned as if malloc'd
THREADS_PER_BLOCK = 256
MAX_BLOCKS_PER_TENSOR = 1024  # the kernel loops over the rest (a grid-stride loop)
UNIT_BYTES = 2  # the kernel copies 16-bit units: every cache dtype (fp32, fp16, bf16) is a whole number of them
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "uint8": 1, "uint16": 2, "bool": 1}
TABLE_COLUMNS = 4  # per cache tensor: cache address, new-rows address, kv heads, units per head

KERNEL_NAME = "write_new_rows"
KERNEL_SOURCE = r"""
// Every new key/value row of one stage call into its row's slot of the fixed cache.
// table: per cache tensor {cache address, new-rows address, kv heads, 16-bit units per head};
// cache [max_rows, kv, length, head] and new rows [rows, kv, 1, head]. blockIdx.y picks the tensor,
// the x threads walk its new rows. positions: the stage call's own input, already on the device.
extern "C" __global__ void write_new_rows(const unsigned long long* table, const long long* positions,
                                          long long rows, long long length) {
    const unsigned long long* entry = table + 4 * blockIdx.y;  // 4 columns a tensor (TABLE_COLUMNS)
    unsigned short* cache = (unsigned short*)entry[0];
    const unsigned short* fresh = (const unsigned short*)entry[1];
    const long long kv_heads = (long long)entry[2], units = (long long)entry[3];
    const long long total = rows * kv_heads * units;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long head_row = i / units;  // row * kv_heads + head
        const long long row = head_row / kv_heads;
        cache[(head_row * length + positions[row]) * units + i % units] = fresh[i];
    }
}
"""


class CacheTensor(NamedTuple):
    """One past/new pair of a stage graph: the cache [max_rows, kv_heads, L, head_dim] and its new rows."""
    past: str
    new: str
    dtype: str
    kv_heads: int
    head_dim: int

    @property
    def head_bytes(self) -> int:
        return self.head_dim * ITEMSIZE[self.dtype]


class StepTensor(NamedTuple):
    """A graph input or output that crosses the bus each call (hidden, positions, kv_mask, logits, hidden_out)."""
    name: str
    dtype: str
    shape: tuple  # without the rows dim

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]


class Binding(NamedTuple):
    """Bind graph tensor `name` ([rows, ...], `dtype`) to device address `ptr`."""
    name: str
    is_input: bool
    dtype: str
    shape: tuple
    ptr: int


class Copy(NamedTuple):
    dst: int
    src: int
    nbytes: int
    to_device: bool


class Launch(NamedTuple):
    """One launch of KERNEL_SOURCE: grid (x, tensors, 1), block (THREADS_PER_BLOCK, 1, 1)."""
    grid: tuple
    block: tuple
    table: int
    positions: int
    rows: int
    length: int

    def arguments(self) -> tuple:
        """(the kernel's arguments as numpy scalars, an array of their addresses): cuLaunchKernel's kernelParams.
        Keep both alive until the launch returns."""
        values = (np.array([self.table], np.uint64), np.array([self.positions], np.uint64),
                  np.array([self.rows], np.int64), np.array([self.length], np.int64))
        return values, np.array([v.ctypes.data for v in values], np.uint64)


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _step_tensors(specs: list, cache_names: set) -> list:
    """The manifest's tensor specs of a stage graph that are not KV cache, as StepTensors (rows dim dropped)."""
    return [StepTensor(s.name, s.dtype, tuple(int(d) for d in s.shape[1:])) for s in specs if s.name not in cache_names]


class CacheLayout:
    """Where every buffer of every stage lives inside one device allocation of `nbytes`, as offsets.

    Order: every stage's caches first (one memset zeroes them all), then the new rows, then the
    step's inputs and outputs (shared by the stages: each call reuses them), then the pointer tables.
    Row r of a buffer is at offset + r * row bytes, so the first `rows` rows are a contiguous prefix.
    """

    def __init__(self, stages: list, inputs: list, outputs: list, max_rows: int, length: int):
        self.stages, self.inputs, self.outputs = stages, inputs, outputs
        self.max_rows, self.length = max_rows, length
        if not any(s.name == "positions" and s.dtype == "int64" for s in inputs):
            raise ManifestError("a stage graph without an int64 'positions' input cannot keep its cache on the GPU")
        offset = 0
        self.cache_offsets: list[list[int]] = []
        self.new_offsets: list[list[int]] = []
        self.step_offsets: dict[str, int] = {}
        self.table_offsets: list[int] = []
        for tensors in stages:
            self.cache_offsets.append([])
            for t in tensors:
                self.cache_offsets[-1].append(offset)
                offset += _aligned(max_rows * t.kv_heads * length * t.head_bytes)
        self.cache_bytes = offset
        for tensors in stages:
            self.new_offsets.append([])
            for t in tensors:
                self.new_offsets[-1].append(offset)
                offset += _aligned(max_rows * t.kv_heads * t.head_bytes)
        for spec in (*inputs, *outputs):
            self.step_offsets[spec.name] = offset
            offset += _aligned(max_rows * spec.row_bytes)
        for tensors in stages:
            self.table_offsets.append(offset)
            offset += _aligned(len(tensors) * TABLE_COLUMNS * 8)
        self.nbytes = offset

    @classmethod
    def of(cls, manifest: Any, max_rows: int) -> "CacheLayout":
        """The layout of a model folder's stage graphs for `max_rows` rows."""
        stages = []
        for stage in manifest.stages:
            specs = {s.name: s for s in manifest.inputs(stage.graph)}
            tensors = []
            for layer in stage.layers:
                for past, new in zip(manifest.past_names(layer), manifest.new_names(layer)):
                    kv_heads, _, head_dim = (int(d) for d in specs[past].shape[1:])
                    tensors.append(CacheTensor(past, new, specs[past].dtype, kv_heads, head_dim))
            stages.append(tensors)
        graph = manifest.stages[0].graph  # every stage graph takes and returns the same step tensors
        cache_names = {n for t in stages[0] for n in (t.past, t.new)}
        return cls(stages, _step_tensors(manifest.inputs(graph), cache_names),
                   _step_tensors(manifest.outputs(graph), cache_names), max_rows, int(manifest.cache_length))

    def tables(self, base: int) -> list:
        """Per stage, the kernel's pointer table: uint64 [tensors, TABLE_COLUMNS] for an allocation at `base`."""
        return [np.array([(base + c, base + n, t.kv_heads, t.head_bytes // UNIT_BYTES)
                          for t, c, n in zip(tensors, caches, news)], np.uint64).reshape(-1, TABLE_COLUMNS)
                for tensors, caches, news in zip(self.stages, self.cache_offsets, self.new_offsets)]

    def bindings(self, k: int, rows: int, base: int) -> list:
        """Every tensor of stage k's graph for a call of `rows` rows: the step's inputs and outputs, each
        cache as the first `rows` rows of its [max_rows, kv, L, hd] buffer, and the new rows after it."""
        out = [Binding(s.name, True, s.dtype, (rows, *s.shape), base + self.step_offsets[s.name]) for s in self.inputs]
        out += [Binding(s.name, False, s.dtype, (rows, *s.shape), base + self.step_offsets[s.name])
                for s in self.outputs]
        for t, cache, new in zip(self.stages[k], self.cache_offsets[k], self.new_offsets[k]):
            out.append(Binding(t.past, True, t.dtype, (rows, t.kv_heads, self.length, t.head_dim), base + cache))
            out.append(Binding(t.new, False, t.dtype, (rows, t.kv_heads, 1, t.head_dim), base + new))
        return out

    def uploads(self, rows: int, base: int, host: dict) -> list:
        """The copies of a call's inputs (host arrays by name, at least `rows` rows each) to the device."""
        return [Copy(base + self.step_offsets[s.name], host[s.name].ctypes.data, rows * s.row_bytes, True)
                for s in self.inputs]

    def downloads(self, rows: int, base: int, host: dict) -> list:
        """The copies of a call's outputs from the device into host arrays (by name)."""
        return [Copy(host[s.name].ctypes.data, base + self.step_offsets[s.name], rows * s.row_bytes, False)
                for s in self.outputs]

    def launch(self, k: int, rows: int, base: int) -> Launch:
        """The one kernel launch that writes stage k's new rows: it depends on the rows and shapes only."""
        most_units = max(t.kv_heads * t.head_bytes // UNIT_BYTES for t in self.stages[k])
        blocks = min(-(-rows * most_units // THREADS_PER_BLOCK), MAX_BLOCKS_PER_TENSOR)
        return Launch((max(blocks, 1), len(self.stages[k]), 1), (THREADS_PER_BLOCK, 1, 1),
                      base + self.table_offsets[k], base + self.step_offsets["positions"], rows, self.length)

    def step_bytes(self, rows: int) -> tuple:
        """(bytes to the device, bytes to the host) of one stage call of `rows` rows."""
        return rows * sum(s.row_bytes for s in self.inputs), rows * sum(s.row_bytes for s in self.outputs)


def host_memory(layout: CacheLayout) -> tuple:
    """(zeroed uint8 array of layout.nbytes, its ALIGN-aligned address) holding the pointer tables for that
    address: host memory laid out as the device's, for `write_new_rows_reference`."""
    raw = np.zeros(layout.nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    memory, base = raw[start:start + layout.nbytes], raw.ctypes.data + start
    for table, offset in zip(layout.tables(base), layout.table_offsets):
        memory[offset:offset + table.nbytes] = table.view(np.uint8).ravel()
    return memory, base


def write_new_rows_reference(memory: np.ndarray, base: int, launch: Launch) -> None:
    """KERNEL_SOURCE in numpy, on `memory` (uint8) standing for the allocation at address `base`: the
    meaning of one launch, for tests on machines without a GPU and to check the kernel on one."""
    def array(address: int, count: int, dtype: Any) -> np.ndarray:
        start = address - base
        return memory[start:start + count * np.dtype(dtype).itemsize].view(dtype)

    units = memory.view(np.uint16)
    table = array(launch.table, launch.grid[1] * TABLE_COLUMNS, np.uint64).reshape(-1, TABLE_COLUMNS)
    positions = array(launch.positions, launch.rows, np.int64)
    for cache, fresh, kv_heads, per_head in table.astype(np.int64):
        i = np.arange(launch.rows * kv_heads * per_head)
        head_row = i // per_head
        slot = (head_row * launch.length + positions[head_row // kv_heads]) * per_head + i % per_head
        units[(cache - base) // UNIT_BYTES + slot] = units[(fresh - base) // UNIT_BYTES + i]


class DeviceCache:
    """A `CacheLayout` in device memory on `stream`, with the kernel that writes new rows.

    Args:
        cuda (dnd_sdk.backends.cuda_runtime.CudaRuntime): the device.
        layout (CacheLayout): the model's buffers for its most rows.
        stream: the CUDA stream every copy and launch goes to.
        kernel (dnd_sdk.backends.cuda_runtime.Kernel): KERNEL_SOURCE as `cuda.compile` built it.
    """

    def __init__(self, cuda: Any, layout: CacheLayout, stream: Any, kernel: Any) -> None:
        self.cuda, self.layout, self.stream, self.kernel = cuda, layout, stream, kernel
        self.base = cuda.malloc(layout.nbytes)
        self.bytes_to_device = self.bytes_to_host = 0  # what stage calls moved, for the traffic check
        self.host_outputs = [{s.name: np.empty((layout.max_rows, *s.shape), np.dtype(s.dtype)) for s in layout.outputs}
                             for _ in layout.stages]  # per stage: the arrays it returns stay valid until its next call
        self._tables = layout.tables(self.base)  # kept alive: the uploads below are asynchronous
        for table, offset in zip(self._tables, layout.table_offsets):
            cuda.copy_to_device(self.base + offset, table.ctypes.data, table.nbytes, stream)
        self.reset()

    def reset(self) -> None:
        """Zero every cache: masked slots still enter the products (times a zero weight), so no NaN may stay."""
        self.cuda.zero(self.base, self.layout.cache_bytes, self.stream)
        self.cuda.synchronize(self.stream)

    def stage_call(self, k: int, inputs: dict, run_graph: Callable[[], None]) -> tuple:
        """Stage k on `inputs` (host arrays by name, rows first): upload them, `run_graph()` (the graph bound
        to `bindings`), write its new rows into their slots, and return its outputs as host arrays."""
        rows = len(inputs["positions"])
        inputs = {s.name: np.ascontiguousarray(inputs[s.name], np.dtype(s.dtype)) for s in self.layout.inputs}
        host = self.host_outputs[k]
        for copy in self.layout.uploads(rows, self.base, inputs):
            self._run(copy)
        run_graph()
        self.cuda.launch(self.kernel, self.layout.launch(k, rows, self.base), self.stream)
        for copy in self.layout.downloads(rows, self.base, host):
            self._run(copy)
        self.cuda.synchronize(self.stream)
        return host["logits"][:rows], host["hidden_out"][:rows]

    def _run(self, copy: Copy) -> None:
        if copy.to_device:
            self.cuda.copy_to_device(copy.dst, copy.src, copy.nbytes, self.stream)
            self.bytes_to_device += copy.nbytes
        else:
            self.cuda.copy_to_host(copy.dst, copy.src, copy.nbytes, self.stream)
            self.bytes_to_host += copy.nbytes

    def synchronize(self) -> None:
        """Wait for this cache's stream: before a graph that runs on another stream (ONNX Runtime's own)."""
        self.cuda.synchronize(self.stream)

    def free(self) -> None:
        if self.base:
            self.cuda.free(self.base)
        self.base = 0
