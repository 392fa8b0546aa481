"""TensorRT 10 calibration without TensorRT: the cache file round trip, and the calibrator's data side
(batches copied through a pinned buffer into one device buffer, its address handed to TensorRT)."""
from __future__ import annotations

import contextlib
import json
import types

import numpy as np

from edgepipe.engines.cuda_memory import CudaMemory, CudaStream, DeviceBuffer, GpuInfo, PinnedBuffer
from edgepipe.tensorrt.calibration.data import CalibrationBatches
from edgepipe.tensorrt.calibration.trt10 import BatchFeeder, CalibrationCache, make_entropy_calibrator

SHA = "ab" * 32


def test_cache_round_trip(tmp_path):
    cache = CalibrationCache(tmp_path / "ours.calib", SHA, (8, 3, 224, 224), {"images": 512})
    assert cache.read() is None  # nothing yet: calibrate
    blob = b"TRT-100300-EntropyCalibration2\ninput: 3c010a14\n"
    cache.write(blob)
    meta = json.loads((tmp_path / "ours.calib.json").read_text())
    assert meta == {"onnx_sha256": SHA, "input_shape": [8, 3, 224, 224], "images": 512}
    again = CalibrationCache(tmp_path / "ours.calib", SHA)  # the next build
    assert again.read() == blob


def test_cache_for_another_model_is_ignored(tmp_path, caplog):
    CalibrationCache(tmp_path / "c.calib", SHA).write(b"scales")
    assert CalibrationCache(tmp_path / "c.calib", "cd" * 32).read() is None
    assert "made for another model" in caplog.text


def test_cache_without_its_json_is_ignored(tmp_path):
    (tmp_path / "c.calib").write_bytes(b"scales from somewhere")
    assert CalibrationCache(tmp_path / "c.calib", SHA).read() is None


class HostMemory(CudaMemory):
    """Stands in for the GPU: 'device' buffers are host arrays addressed by a fake pointer. It lets the
    calibrator's copy/ordering logic run here; the real backends run in the GPU tests."""

    backend = "host"
    device = 0

    def __init__(self) -> None:
        self.device_data: dict[int, np.ndarray] = {}
        self.synced = 0
        self.freed: list = []

    def gpu_info(self) -> GpuInfo:
        return GpuInfo("host", "0.0")

    def activate(self):
        return contextlib.nullcontext()

    def pinned(self, nbytes: int) -> PinnedBuffer:
        return PinnedBuffer(np.zeros(nbytes, np.uint8), nbytes)

    def device_alloc(self, nbytes: int) -> DeviceBuffer:
        ptr = 0x1000 * (len(self.device_data) + 1)
        self.device_data[ptr] = np.zeros(nbytes, np.uint8)
        return DeviceBuffer(ptr, nbytes)

    def create_stream(self) -> CudaStream:
        return CudaStream(7, lambda s: setattr(self, "synced", self.synced + 1))

    def copy_htod_async(self, dst, src, stream) -> None:
        self.device_data[dst.ptr][: src.nbytes] = src.view(np.uint8).ravel()

    def copy_dtoh_async(self, dst, src, stream) -> None:
        dst.view(np.uint8).ravel()[:] = self.device_data[src.ptr][: dst.nbytes]

    def free(self, buf) -> None:
        self.freed.append(buf)

    def _release(self, kind: str, handle) -> None:
        pass  # free() and close() are its own: nothing goes through the registry

    def close(self) -> None:
        pass


def test_feeder_hands_each_batch_to_the_device_then_stops(small_val_folder):
    batches = CalibrationBatches(small_val_folder, (128, 96), batch_size=4, max_images=None)
    expected = list(batches)
    mem = HostMemory()
    feeder = BatchFeeder(batches, mem, batches.shape)
    for want in expected:
        ptrs = feeder.next_pointers()
        assert ptrs is not None and len(ptrs) == 1
        got = mem.device_data[ptrs[0]].view(np.float32).reshape(batches.shape)
        np.testing.assert_array_equal(got, want)
    assert feeder.next_pointers() is None  # TensorRT's end-of-data signal
    assert feeder.count == 3 and mem.synced == 3  # each copy finished before TensorRT reads it
    assert len(mem.device_data) == 1  # one device buffer, reused for every batch
    feeder.close()
    assert len(mem.freed) == 3  # stream, device buffer, pinned buffer


def test_feeder_without_data_allocates_nothing():
    mem = HostMemory()
    feeder = BatchFeeder(None, mem, (8, 3, 224, 224))
    assert feeder.next_pointers() is None and not mem.device_data
    feeder.close()
    assert mem.freed == []


def test_entropy_calibrator_wires_feeder_and_cache(tmp_path, small_val_folder):
    class IInt8EntropyCalibrator2:  # TensorRT 10's base class, faked: only our subclass's wiring is under test
        def __init__(self) -> None:
            self.base_initialised = True

    trt = types.SimpleNamespace(IInt8EntropyCalibrator2=IInt8EntropyCalibrator2)
    batches = CalibrationBatches(small_val_folder, (64, 64), batch_size=6, max_images=None)
    cache = CalibrationCache(tmp_path / "m.calib", SHA, batches.shape)
    calib = make_entropy_calibrator(trt, BatchFeeder(batches, HostMemory(), batches.shape), cache)
    assert isinstance(calib, IInt8EntropyCalibrator2) and calib.base_initialised
    assert calib.get_batch_size() == 6
    assert calib.read_calibration_cache() is None
    assert calib.get_batch(["input"]) is not None and calib.get_batch(["input"]) is not None
    assert calib.get_batch(["input"]) is None
    calib.write_calibration_cache(memoryview(b"scales"))  # TensorRT hands a buffer, not bytes
    assert calib.read_calibration_cache() == b"scales"


def test_calibrator_stops_cleanly_on_a_bad_batch(caplog):
    class Base:
        def __init__(self) -> None:
            pass

    bad = [np.zeros((2, 3, 8, 8), np.float64)]  # wrong dtype: must not reach TensorRT
    calib = make_entropy_calibrator(types.SimpleNamespace(IInt8EntropyCalibrator2=Base),
                                    BatchFeeder(bad, HostMemory(), (2, 3, 8, 8)), CalibrationCache("x", SHA))
    assert calib.get_batch(["input"]) is None
    assert "calibration batch failed" in caplog.text
