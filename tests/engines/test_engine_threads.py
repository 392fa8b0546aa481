"""A thread budget reaches the engine's library: ONNX Runtime's session options read back from the session,
PyTorch's pool; and the engine output keeps its values through the leaner uint8 conversion."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgepipe.core.datasets import list_labelled_images, read_rgb
from edgepipe.engines import ENGINES, EngineThreads, load_engine
from edgepipe.engines.base import from_model_output

MODELS = Path(__file__).resolve().parents[2] / "edgepipe" / "data" / "models"


def _session_options(engine):
    return engine._session.get_session_options()


def test_a_count_or_nothing_becomes_a_budget():
    assert EngineThreads.of(None) == EngineThreads()
    assert EngineThreads.of(3) == EngineThreads(count=3)
    budget = EngineThreads(2, spin=False)
    assert EngineThreads.of(budget) is budget


@pytest.mark.parametrize("spin", [False, True])
def test_onnx_runtime_takes_the_budget(spin):
    import onnxruntime as ort

    engine = load_engine("ours", EngineThreads(count=2, spin=spin))
    try:
        options = _session_options(engine)
        assert options.intra_op_num_threads == 2
        assert options.inter_op_num_threads == 1  # one chain of operators: no second pool
        assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spin else "0")
    finally:
        engine.close()


def test_without_a_budget_onnx_runtime_keeps_its_defaults():
    engine = load_engine("ours")
    try:
        options = _session_options(engine)
        assert options.intra_op_num_threads == 0  # 0: ORT's own choice, one per core
        with pytest.raises(RuntimeError, match="does not have configuration"):  # ORT's default (it spins)
            options.get_session_config_entry("session.intra_op.allow_spinning")
    finally:
        engine.close()


def test_a_plain_count_still_works_as_before():
    """Evaluation passes an int (one thread per worker)."""
    engine = load_engine("ours", 1)
    try:
        assert _session_options(engine).intra_op_num_threads == 1
    finally:
        engine.close()


def test_torch_engine_sets_the_process_pool():
    import torch

    before = torch.get_num_threads()
    try:
        engine = load_engine(str(MODELS / "ours.pt"), EngineThreads(count=1))
        if engine.device == "cpu":
            assert torch.get_num_threads() == 1
        engine.close()
    finally:
        torch.set_num_threads(before)


def test_which_kinds_compute_on_the_cpu():
    assert not ENGINES["none"].computes_on_cpu()
    assert not ENGINES["tensorrt"].computes_on_cpu()
    assert ENGINES["tvl1"].computes_on_cpu()


def test_the_same_output_whatever_the_thread_count(small_val_folder):
    """The ED's output does not depend on how many threads computed it (the capture's bytes stay the same)."""
    frames = np.stack([read_rgb(i.path) for i in list_labelled_images(small_val_folder)[:2]])
    outs = []
    for n in (1, 2):
        engine = load_engine("ours", EngineThreads(count=n, spin=False))
        outs.append(engine.run(frames))
        engine.close()
    assert np.array_equal(outs[0], outs[1])


def _from_model_output_numpy(x: np.ndarray) -> np.ndarray:
    """The conversion written plainly in numpy (five passes, five buffers): the reference for the values."""
    y = np.clip(np.rint(x.astype(np.float32).astype(np.float64).transpose(0, 2, 3, 1) * 255.0), 0, 255)
    return np.ascontiguousarray(y.astype(np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_model_output_conversion_rounds_half_to_even_and_clamps(dtype):
    rng = np.random.default_rng(0)
    x = (rng.random((2, 3, 37, 53)) * 1.4 - 0.2).astype(dtype)  # out of range on both sides: clamped
    x.flat[:256] = (np.arange(256) - 0.5) / 255  # on (or next to) the rounding boundaries
    x.flat[256] = np.nan
    out = from_model_output(x)
    assert out.dtype == np.uint8 and out.shape == (2, 37, 53, 3) and out.flags.c_contiguous
    ref = _from_model_output_numpy(np.nan_to_num(x, nan=0.0))
    assert np.array_equal(out, ref)
    if dtype != np.float16:  # (float16 holds 1.5 / 255 only approximately)
        assert out[0, 0, 0, 0] == 0 and out[0, 0, 2, 0] == 2  # -0.5 -> 0; 1.5 -> 2 (half to even)


def test_model_output_conversion_of_one_channel_and_of_strided_input():
    x = np.random.default_rng(2).random((3, 1, 8, 9), dtype=np.float32)
    assert np.array_equal(from_model_output(x), _from_model_output_numpy(x))
    y = np.random.default_rng(3).random((1, 9, 8, 3), dtype=np.float32).transpose(0, 3, 2, 1)  # not C-contiguous
    assert np.array_equal(from_model_output(y), _from_model_output_numpy(y))


def test_model_output_conversion_makes_no_float_temporary():
    import tracemalloc

    x = np.random.default_rng(1).random((1, 3, 360, 640), dtype=np.float32)
    frame_bytes = 360 * 640 * 3
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        from_model_output(x)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        _from_model_output_numpy(x)
        peak_before = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * frame_bytes  # the three uint8 planes and the uint8 frame
    assert peak_before > 7.5 * frame_bytes  # float temporaries
