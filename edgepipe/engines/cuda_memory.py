"""Device memory for the TensorRT engine and the INT8 calibrator: one small interface, two backends.

    pinned host buffer, device buffer, stream, async H2D/D2H copies, stream sync, GPU identity

`pycuda` (the project's choice on Jetsons; built from source against the local CUDA) and `cuda-python`
(`cuda.bindings.runtime`, wheels on PyPI; `cuda.cudart` in releases before 12.6) implement it.
`open_cuda_memory()` picks pycuda when it imports, else cuda-python; `EDGEPIPE_CUDA_BACKEND=pycuda|cuda-python`
forces one. Nothing here imports a CUDA package at module import time.

Contexts and threads. TensorRT uses the CUDA runtime API, which works in the device's *primary context*
and binds it to whichever thread calls it. The capture loop builds the engine on the main thread and runs
it on its own worker thread, so:
  * cuda-python (runtime API) shares that primary context by construction; `activate()` only calls
    `cudaSetDevice`, which is per-thread state, so every thread that enters it talks to the same device.
  * pycuda does NOT use `pycuda.autoinit` (it creates a separate context, current only on the importing
    thread: TensorRT on the worker thread would then run in another context than our buffers). Instead we
    retain the device's primary context (`Device.retain_primary_context()`) and push/pop it around every
    call (`activate()`), from whatever thread makes it. Buffers, the stream and TensorRT all live in the one
    primary context, whichever thread touches them.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from edgepipe.core.errors import EdgepipeError

log = logging.getLogger(__name__)

BACKENDS = ("pycuda", "cuda-python")
ENV_BACKEND = "EDGEPIPE_CUDA_BACKEND"


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.7"
    total_memory: int = 0  # bytes; 0 when unknown


@dataclass
class DeviceBuffer:
    ptr: int  # device address, as TensorRT's set_tensor_address and get_batch want it
    nbytes: int
    handle: Any = None  # the backend's own object (kept alive until freed)


@dataclass
class PinnedBuffer:
    array: np.ndarray  # flat uint8 view of page-locked host memory; use .view(dtype)
    nbytes: int
    handle: Any = None


class CudaStream:
    def __init__(self, handle: int, synchronize, raw: Any = None):
        self.handle = handle  # integer cudaStream_t, as execute_async_v3 wants it
        self._synchronize = synchronize
        self.raw = raw

    def synchronize(self) -> None:
        self._synchronize(self)


class CudaMemory(ABC):
    """The interface. Buffers are freed explicitly (`free`), or all at once by `close`: each backend remembers
    what it allocated (`_remember`) and says how to release one kind of handle (`_release`)."""

    backend: str
    device: int

    def __init__(self) -> None:
        self._live: dict[int, tuple[str, Any]] = {}  # id -> (kind, handle), freed by close()
        self._lock = threading.Lock()

    def _remember(self, obj, kind: str, handle) -> None:
        with self._lock:
            self._live[id(obj)] = (kind, handle)

    def free(self, buf: DeviceBuffer | PinnedBuffer | CudaStream) -> None:
        with self._lock:
            entry = self._live.pop(id(buf), None)
        if entry is not None:
            self._release(*entry)

    @abstractmethod
    def _release(self, kind: str, handle) -> None: ...

    def _release_all(self) -> None:
        """Free everything still live: streams first (nothing may still be queued on the buffers), then device
        and host buffers; a failure is logged and the rest still freed (teardown must not stop half way)."""
        with self._lock:
            entries, self._live = list(self._live.values()), {}
        for kind in ("stream", "device", "host"):
            for k, handle in entries:
                if k == kind:
                    try:
                        self._release(k, handle)
                    except Exception as exc:  # each backend raises its own error types
                        log.warning("freeing a CUDA %s failed: %s", k, exc)

    @abstractmethod
    def gpu_info(self) -> GpuInfo: ...

    @abstractmethod
    def activate(self) -> contextlib.AbstractContextManager: ...

    @abstractmethod
    def pinned(self, nbytes: int) -> PinnedBuffer: ...

    @abstractmethod
    def device_alloc(self, nbytes: int) -> DeviceBuffer: ...

    @abstractmethod
    def create_stream(self) -> CudaStream: ...

    @abstractmethod
    def copy_htod_async(self, dst: DeviceBuffer, src: np.ndarray, stream: CudaStream) -> None: ...

    @abstractmethod
    def copy_dtoh_async(self, dst: np.ndarray, src: DeviceBuffer, stream: CudaStream) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def pinned_array(self, shape: tuple[int, ...], dtype: np.dtype | type) -> tuple[PinnedBuffer, np.ndarray]:
        """A page-locked buffer and a typed ndarray view of it (the view dies with the buffer)."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        buf = self.pinned(nbytes)
        return buf, buf.array[:nbytes].view(dtype).reshape(shape)


def _check_copy(host: np.ndarray, dev: DeviceBuffer) -> None:
    # An async copy from pageable or strided memory would be wrong or silently synchronous.
    if not host.flags.c_contiguous:
        raise ValueError("host array for a device copy must be C-contiguous")
    if host.nbytes > dev.nbytes:
        raise ValueError(f"copy of {host.nbytes} bytes does not fit a {dev.nbytes}-byte device buffer")


# --- cuda-python --------------------------------------------------------------------------------


_NO_GPU_ERRORS = (35, 100)  # cudaErrorInsufficientDriver, cudaErrorNoDevice


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6 (and the only path in 13)
    except ImportError:
        from cuda import cudart  # older cuda-python; raises ImportError when absent
    return cudart


class CudaPythonMemory(CudaMemory):
    backend = "cuda-python"

    def __init__(self, device: int = 0):
        super().__init__()
        self._rt = _import_cudart()
        self.device = device
        count = self._call(self._rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if device >= count:
            raise EdgepipeError(f"CUDA device {device} not found ({count} device(s) visible)")
        self._call(self._rt.cudaSetDevice(device), "cudaSetDevice")

    def _call(self, result, what: str):
        # cuda-python returns (err, value...) tuples instead of raising.
        err, rest = result[0], result[1:]
        if int(err) != 0:
            _, text = self._rt.cudaGetErrorString(err)
            text = text.decode() if isinstance(text, bytes) else str(text)
            name = getattr(err, "name", str(int(err)))
            hint = " (no usable NVIDIA GPU or driver on this machine)" if int(err) in _NO_GPU_ERRORS else ""
            raise EdgepipeError(f"CUDA error in {what}: {name}: {text}{hint}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def gpu_info(self) -> GpuInfo:
        prop = self._call(self._rt.cudaGetDeviceProperties(self.device), "cudaGetDeviceProperties")
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return GpuInfo(name.split("\x00")[0].strip(), f"{prop.major}.{prop.minor}", int(prop.totalGlobalMem))

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        self._call(self._rt.cudaSetDevice(self.device), "cudaSetDevice")
        yield

    def pinned(self, nbytes: int) -> PinnedBuffer:
        ptr = int(self._call(self._rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        array = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_uint8)), (nbytes,))
        buf = PinnedBuffer(array, nbytes, ptr)
        self._remember(buf, "host", ptr)
        return buf

    def device_alloc(self, nbytes: int) -> DeviceBuffer:
        ptr = int(self._call(self._rt.cudaMalloc(nbytes), "cudaMalloc"))
        buf = DeviceBuffer(ptr, nbytes, ptr)
        self._remember(buf, "device", ptr)
        return buf

    def create_stream(self) -> CudaStream:
        raw = self._call(self._rt.cudaStreamCreate(), "cudaStreamCreate")
        stream = CudaStream(int(raw), lambda s: self._call(self._rt.cudaStreamSynchronize(s.raw),
                                                            "cudaStreamSynchronize"), raw)
        self._remember(stream, "stream", raw)
        return stream

    def copy_htod_async(self, dst: DeviceBuffer, src: np.ndarray, stream: CudaStream) -> None:
        _check_copy(src, dst)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self._rt.cudaMemcpyAsync(dst.ptr, src.ctypes.data, src.nbytes, kind, stream.raw),
                   "cudaMemcpyAsync(H2D)")

    def copy_dtoh_async(self, dst: np.ndarray, src: DeviceBuffer, stream: CudaStream) -> None:
        _check_copy(dst, src)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self._rt.cudaMemcpyAsync(dst.ctypes.data, src.ptr, dst.nbytes, kind, stream.raw),
                   "cudaMemcpyAsync(D2H)")

    def _release(self, kind: str, handle) -> None:
        fn = {"host": self._rt.cudaFreeHost, "device": self._rt.cudaFree, "stream": self._rt.cudaStreamDestroy}[kind]
        self._call(fn(handle), fn.__name__)

    def close(self) -> None:
        self._release_all()


# --- pycuda -------------------------------------------------------------------------------------


class PyCudaMemory(CudaMemory):
    backend = "pycuda"

    def __init__(self, device: int = 0):
        import pycuda.driver as cuda  # ImportError when absent

        super().__init__()
        self._cuda = cuda
        self.device = device
        try:
            cuda.init()
            if device >= cuda.Device.count():
                raise EdgepipeError(f"CUDA device {device} not found ({cuda.Device.count()} device(s) visible)")
            self._dev = cuda.Device(device)
            # The primary context, shared with TensorRT's runtime-API calls (see the module docstring).
            self._ctx = self._dev.retain_primary_context()
        except cuda.Error as exc:
            raise EdgepipeError(f"CUDA error (pycuda): {exc}") from None

    def gpu_info(self) -> GpuInfo:
        major, minor = self._dev.compute_capability()
        return GpuInfo(self._dev.name(), f"{major}.{minor}", int(self._dev.total_memory()))

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        # Push/pop per call rather than once per thread: the capture loop's worker threads come and go.
        self._ctx.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def pinned(self, nbytes: int) -> PinnedBuffer:
        with self.activate():
            array = self._cuda.pagelocked_empty(nbytes, np.uint8)
        buf = PinnedBuffer(array, nbytes, array)
        self._remember(buf, "host", array)
        return buf

    def device_alloc(self, nbytes: int) -> DeviceBuffer:
        with self.activate():
            alloc = self._cuda.mem_alloc(nbytes)
        buf = DeviceBuffer(int(alloc), nbytes, alloc)
        self._remember(buf, "device", alloc)
        return buf

    def create_stream(self) -> CudaStream:
        with self.activate():
            raw = self._cuda.Stream()

        def sync(s: CudaStream) -> None:
            with self.activate():
                s.raw.synchronize()

        stream = CudaStream(int(raw.handle), sync, raw)
        self._remember(stream, "stream", raw)
        return stream

    def copy_htod_async(self, dst: DeviceBuffer, src: np.ndarray, stream: CudaStream) -> None:
        _check_copy(src, dst)
        with self.activate():
            self._cuda.memcpy_htod_async(dst.ptr, src, stream.raw)  # copies src's whole buffer

    def copy_dtoh_async(self, dst: np.ndarray, src: DeviceBuffer, stream: CudaStream) -> None:
        _check_copy(dst, src)
        with self.activate():
            self._cuda.memcpy_dtoh_async(dst, src.ptr, stream.raw)  # fills dst's whole buffer

    def _release(self, kind: str, handle) -> None:
        with self.activate():
            if kind == "host":
                handle.base.free()  # pagelocked_empty's array is backed by a HostAllocation
            elif kind == "device":
                handle.free()
            # streams: pycuda destroys them when the Stream object goes (inside this context)

    def close(self) -> None:
        self._release_all()
        if self._ctx is not None:
            self._ctx.detach()  # drop our retain of the primary context
            self._ctx = None


# --- selection ----------------------------------------------------------------------------------


def _constructors() -> dict[str, type[CudaMemory]]:
    return {"pycuda": PyCudaMemory, "cuda-python": CudaPythonMemory}


def open_cuda_memory(backend: str | None = None, device: int = 0) -> CudaMemory:
    """The named backend, or the first that imports (pycuda, then cuda-python). One-line error otherwise."""
    backend = backend or os.environ.get(ENV_BACKEND) or None
    if backend is not None and backend not in BACKENDS:
        raise EdgepipeError(f"unknown CUDA backend {backend!r}: use one of {', '.join(BACKENDS)}")
    tried = []
    for name in ([backend] if backend else list(BACKENDS)):
        try:
            mem = _constructors()[name](device)
        except ImportError as exc:
            tried.append(f"{name} ({exc.name or exc})")
            continue
        log.debug("CUDA memory backend: %s", name)
        return mem
    raise EdgepipeError(
        "no CUDA Python package found for device memory (tried " + ", ".join(tried) + "): "
        "pip install cuda-python, or build pycuda (see deploy/jetson.md)"
    )


def available_backends() -> list[str]:
    """Backends whose package imports here (no CUDA call is made)."""
    import importlib.util

    found = []
    if importlib.util.find_spec("pycuda") is not None:
        found.append("pycuda")
    try:
        if importlib.util.find_spec("cuda.bindings") is not None or importlib.util.find_spec("cuda.cudart"):
            found.append("cuda-python")
    except ModuleNotFoundError:
        pass
    return found
