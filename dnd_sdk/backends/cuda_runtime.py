"""The few CUDA runtime calls the TensorRT backend makes, through cuda-python's `cuda.bindings.runtime`.

    cuda = CudaRuntime()                  # BackendUnavailableError without a usable driver and GPU
    stream = cuda.create_stream()
    ptr = cuda.malloc(array.nbytes)
    cuda.copy(ptr, array.ctypes.data, array.nbytes, HOST_TO_DEVICE, stream)
    cuda.synchronize(stream); cuda.free(ptr); cuda.destroy_stream(stream)

These bindings need no libcudart on the library path, only the driver's libcuda: cuda-python 12
implements the runtime API on the driver API and cuda-python 13 links cudart statically
(NVIDIA/cuda-python issue #100). A pip-only CUDA install therefore works; polygraphy's CUDA
wrapper, used before, looked for libcudart in a few system folders only.
"""
from typing import Any

try:
    from cuda.bindings import runtime as cudart  # cuda-python >= 12.6.1 (its release notes: cuda.cudart moved here)
except ImportError as e:
    raise ImportError(f"the TensorRT backend needs cuda-python >= 12.6.1 ({e}); pip install 'dnd-sdk[gpu]', or "
                      "'dnd-sdk[gpu-cu12]' on a CUDA 12 driver") from None

from ..errors import BackendUnavailableError

HOST_TO_DEVICE = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
DEVICE_TO_HOST = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
DEVICE_TO_DEVICE = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice

try:  # cuda-bindings 12.9.1 deprecates int(handle) in favour of this (its release notes)
    from cuda.bindings.utils import get_cuda_native_handle as _native_handle
except ImportError:
    _native_handle = int


def _check(result: tuple, call: str) -> Any:
    """cuda.bindings calls return (cudaError_t, *values): the values, or BackendUnavailableError naming the error."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(err)
        raise BackendUnavailableError(f"CUDA {call} failed: {err.name} ({text.decode()})")
    return values[0] if len(values) == 1 else tuple(values)


class CudaRuntime:
    """CUDA device 0, checked on creation: a missing or too old driver, or no GPU, is a BackendUnavailableError."""

    def __init__(self) -> None:
        try:
            count = _check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        except BackendUnavailableError as e:  # cudaErrorNoDevice, cudaErrorInsufficientDriver...
            raise BackendUnavailableError(f"no usable CUDA device for TensorRT: {e}. cuda-python 13 needs a CUDA 13 "
                                          "driver (r580+); on an older driver use 'dnd-sdk[gpu-cu12]'") from None
        if count < 1:
            raise BackendUnavailableError("no usable CUDA device for TensorRT: the driver reports no GPU")
        _check(cudart.cudaSetDevice(0), "cudaSetDevice")

    def malloc(self, nbytes: int) -> int:
        return int(_check(cudart.cudaMalloc(nbytes), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        _check(cudart.cudaFree(ptr), "cudaFree")

    def create_stream(self) -> Any:
        return _check(cudart.cudaStreamCreate(), "cudaStreamCreate")

    def destroy_stream(self, stream: Any) -> None:
        _check(cudart.cudaStreamDestroy(stream), "cudaStreamDestroy")

    @staticmethod
    def stream_handle(stream: Any) -> int:
        """The cudaStream_t as the integer that TensorRT's execute_async_v3 takes."""
        return int(_native_handle(stream))

    def copy(self, dst: int, src: int, nbytes: int, kind: Any, stream: Any) -> None:
        """cudaMemcpyAsync on `stream`; dst and src are addresses (a device pointer, or array.ctypes.data)."""
        _check(cudart.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync")

    def copy_rows(self, dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, height: int,
                  stream: Any) -> None:
        """cudaMemcpy2DAsync, device to device: `height` rows of `width` bytes, `src_pitch` bytes apart at the
        source and `dst_pitch` apart at the destination."""
        _check(cudart.cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, height, DEVICE_TO_DEVICE, stream),
               "cudaMemcpy2DAsync")

    def zero(self, ptr: int, nbytes: int, stream: Any) -> None:
        _check(cudart.cudaMemsetAsync(ptr, 0, nbytes, stream), "cudaMemsetAsync")

    def synchronize(self, stream: Any) -> None:
        _check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
