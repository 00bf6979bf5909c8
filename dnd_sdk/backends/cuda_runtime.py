"""The few CUDA calls the GPU backends make, through cuda-python's `cuda.bindings` (runtime, driver, NVRTC).

    cuda = CudaRuntime()                  # BackendUnavailableError without a usable driver and GPU
    stream = cuda.create_stream()
    ptr = cuda.malloc(array.nbytes)
    cuda.copy(ptr, array.ctypes.data, array.nbytes, HOST_TO_DEVICE, stream)
    kernel = cuda.compile(SOURCE, "name")  # NVRTC, once per backend; BackendUnavailableError without NVRTC
    cuda.launch(kernel, launch, stream)   # a device_cache.Launch: grid, block and the kernel's arguments
    cuda.synchronize(stream); cuda.free(ptr); cuda.destroy_stream(stream)

These bindings need no libcudart on the library path, only the driver's libcuda: cuda-python 12
implements the runtime API on the driver API and cuda-python 13 links cudart statically
(NVIDIA/cuda-python issue #100). A pip-only CUDA install therefore works; polygraphy's CUDA
wrapper, used before, looked for libcudart in a few system folders only.
"""
import threading
from typing import Any

import numpy as np

try:
    from cuda.bindings import runtime as cudart  # cuda-python >= 12.6.1 (its release notes: cuda.cudart moved here)
except ImportError as e:
    raise ImportError(f"the GPU backends need cuda-python >= 12.6.1 ({e}); pip install 'dnd-sdk[gpu]', or "
                      "'dnd-sdk[gpu-cu12]' on a CUDA 12 driver") from None

from ..errors import BackendUnavailableError

INSTALL = "pip install 'dnd-sdk[gpu]', or 'dnd-sdk[gpu-cu12]' on a CUDA 12 driver"
HOST_TO_DEVICE = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
DEVICE_TO_HOST = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost

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


def _check_driver(result: tuple, call: str) -> Any:
    """The same for the driver API's (CUresult, *values)."""
    from cuda.bindings import driver
    err, *values = result
    if err != driver.CUresult.CUDA_SUCCESS:
        _, text = driver.cuGetErrorString(err)
        raise BackendUnavailableError(f"CUDA {call} failed: {err.name} ({text.decode() if text else '?'})")
    return values[0] if len(values) == 1 else tuple(values)


def _check_nvrtc(result: tuple, call: str) -> Any:
    """The same for NVRTC's (nvrtcResult, *values)."""
    from cuda.bindings import nvrtc
    err, *values = result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise BackendUnavailableError(f"NVRTC {call} failed: {err.name}")
    return values[0] if len(values) == 1 else (tuple(values) if values else None)


class Kernel:
    """A compiled kernel: the loaded module (kept alive) and its function."""

    def __init__(self, module: Any, function: Any) -> None:
        self.module, self.function = module, function


class CudaRuntime:
    """CUDA device 0, checked on creation: a missing or too old driver, or no GPU, is a BackendUnavailableError."""

    def __init__(self) -> None:
        try:
            count = _check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        except BackendUnavailableError as e:  # cudaErrorNoDevice, cudaErrorInsufficientDriver...
            raise BackendUnavailableError(f"no usable CUDA device: {e}. cuda-python 13 needs a CUDA 13 "
                                          "driver (r580+); on an older driver use 'dnd-sdk[gpu-cu12]'") from None
        if count < 1:
            raise BackendUnavailableError("no usable CUDA device: the driver reports no GPU")
        _check(cudart.cudaSetDevice(0), "cudaSetDevice")  # also makes device 0's primary context current here
        self._thread = threading.get_ident()

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

    def copy_to_device(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        self.copy(dst, src, nbytes, HOST_TO_DEVICE, stream)

    def copy_to_host(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        self.copy(dst, src, nbytes, DEVICE_TO_HOST, stream)

    def compile(self, source: str, name: str) -> Kernel:
        """`extern "C"` kernel `name` of CUDA C++ `source`, compiled by NVRTC into a CUBIN for this GPU and loaded
        into the primary context (the one the runtime calls, ONNX Runtime and TensorRT use)."""
        try:
            from cuda.bindings import driver, nvrtc
        except ImportError as e:
            raise BackendUnavailableError(f"cuda-python has no NVRTC or driver bindings ({e}); {INSTALL}") from None
        major = _check(cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, 0),
                       "cudaDeviceGetAttribute")
        minor = _check(cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, 0),
                       "cudaDeviceGetAttribute")
        try:  # the first NVRTC call loads libnvrtc, which a pip install brings as nvidia-cuda-nvrtc
            program = _check_nvrtc(nvrtc.nvrtcCreateProgram(source.encode(), f"{name}.cu".encode(), 0, [], []),
                                   "nvrtcCreateProgram")
        except RuntimeError as e:
            raise BackendUnavailableError(f"NVRTC (libnvrtc) cannot be loaded ({e}); {INSTALL}") from None
        try:
            options = [f"--gpu-architecture=sm_{major}{minor}".encode()]
            err, = nvrtc.nvrtcCompileProgram(program, len(options), options)
            if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
                size = _check_nvrtc(nvrtc.nvrtcGetProgramLogSize(program), "nvrtcGetProgramLogSize")
                log = b" " * size
                _check_nvrtc(nvrtc.nvrtcGetProgramLog(program, log), "nvrtcGetProgramLog")
                raise BackendUnavailableError(f"NVRTC could not compile {name} for sm_{major}{minor} ({err.name}): "
                                              f"{log.decode(errors='replace').strip()[:500]}; a newer NVRTC may know "
                                              f"this GPU ({INSTALL})")
            cubin = b" " * _check_nvrtc(nvrtc.nvrtcGetCUBINSize(program), "nvrtcGetCUBINSize")
            _check_nvrtc(nvrtc.nvrtcGetCUBIN(program, cubin), "nvrtcGetCUBIN")
        finally:
            nvrtc.nvrtcDestroyProgram(program)
        image = np.frombuffer(cubin, np.uint8)
        module = _check_driver(driver.cuModuleLoadData(image.ctypes.data), "cuModuleLoadData")
        return Kernel(module, _check_driver(driver.cuModuleGetFunction(module, name.encode()), "cuModuleGetFunction"))

    def launch(self, kernel: Kernel, launch: Any, stream: Any) -> None:
        """cuLaunchKernel of `kernel` with a device_cache.Launch's grid, block and arguments, on `stream`."""
        from cuda.bindings import driver
        self._use_on_this_thread()
        values, addresses = launch.arguments()  # both alive until the call returns: it copies the arguments
        _check_driver(driver.cuLaunchKernel(kernel.function, *launch.grid, *launch.block, 0,
                                            driver.CUstream(self.stream_handle(stream)), addresses.ctypes.data, 0),
                      "cuLaunchKernel")
        del values

    def _use_on_this_thread(self) -> None:
        """The driver API needs a current context on the calling thread (the scheduler's thread, not the one
        that opened the backend): cudaSetDevice makes the primary context current, once per thread change."""
        if threading.get_ident() != self._thread:
            _check(cudart.cudaSetDevice(0), "cudaSetDevice")
            self._thread = threading.get_ident()

    def zero(self, ptr: int, nbytes: int, stream: Any) -> None:
        _check(cudart.cudaMemsetAsync(ptr, 0, nbytes, stream), "cudaMemsetAsync")

    def synchronize(self, stream: Any) -> None:
        _check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
