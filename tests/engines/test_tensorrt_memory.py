"""The device-memory layer's selection and errors where no GPU is present (the GPU side is in
test_tensorrt_gpu.py)."""
from __future__ import annotations

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
