"""The device-memory layer's selection and errors where no GPU is present (the GPU side is in
test_tensorrt_gpu.py)."""
from __future__ import annotations

import contextlib
import logging

import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.engines import cuda_memory as cm


def test_unknown_backend_is_refused():
    with pytest.raises(EdgepipeError, match="unknown CUDA backend 'numba'"):
        cm.open_cuda_memory("numba")


def test_env_variable_picks_the_backend(monkeypatch):
    monkeypatch.setenv(cm.ENV_BACKEND, "nonsense")
    with pytest.raises(EdgepipeError, match="unknown CUDA backend 'nonsense'"):
        cm.open_cuda_memory()


@pytest.mark.skipif(bool(cm.available_backends()), reason="a CUDA Python package is installed here")
def test_no_backend_installed_is_one_line():
    with pytest.raises(EdgepipeError) as exc:
        cm.open_cuda_memory()
    msg = str(exc.value)
    assert "pip install cuda-python" in msg and "pycuda" in msg and "\n" not in msg


@pytest.mark.skipif("cuda-python" not in cm.available_backends(), reason="cuda-python is not installed")
def test_cuda_python_without_a_gpu_is_one_line():
    try:
        mem = cm.open_cuda_memory("cuda-python")
    except EdgepipeError as exc:
        assert "CUDA error in cudaGetDeviceCount" in str(exc) and "\n" not in str(exc)
    else:  # there is a GPU after all: the GPU tests cover it
        mem.close()
        pytest.skip("a GPU is usable here")


class _Registry(cm.CudaMemory):
    """The backends' shared bookkeeping with fake handles: which allocations free() and close() release, in
    which order, and that a failing release does not stop the rest (the real backends run in the GPU tests)."""

    backend, device = "fake", 0

    def __init__(self, failing: str | None = None) -> None:
        super().__init__()
        self.released: list[tuple[str, str]] = []
        self.failing = failing

    def _release(self, kind: str, handle) -> None:
        if handle == self.failing:
            raise RuntimeError(f"cannot free {handle}")
        self.released.append((kind, handle))

    def allocate(self, kind: str, handle: str):
        obj = object()
        self._remember(obj, kind, handle)
        return obj

    gpu_info = activate = pinned = device_alloc = create_stream = lambda self, *a: contextlib.nullcontext()
    copy_htod_async = copy_dtoh_async = lambda self, *a: None

    def close(self) -> None:
        self._release_all()


def test_free_releases_one_allocation_and_close_the_rest_streams_first(caplog):
    mem = _Registry(failing="d2")
    host, dev1 = mem.allocate("host", "h1"), mem.allocate("device", "d1")
    mem.allocate("device", "d2"), mem.allocate("stream", "s1")
    mem.free(dev1)
    mem.free(dev1)  # twice: the second finds nothing to release
    assert mem.released == [("device", "d1")]
    with caplog.at_level(logging.WARNING):
        mem.close()
    # streams before buffers (nothing may still be queued on them), the failing one logged, the rest freed
    assert mem.released == [("device", "d1"), ("stream", "s1"), ("host", "h1")]
    assert "freeing a CUDA device failed: cannot free d2" in caplog.text
    mem.free(host)  # after close: already released, nothing happens
    assert len(mem.released) == 3
