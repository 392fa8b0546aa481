"""TensorRT 10 implicit INT8 calibration: an `IInt8EntropyCalibrator2` fed from `CalibrationBatches`,
with a calibration cache that the next build reuses instead of calibrating again.

The calibrator API is deprecated since TensorRT 10.1 (superseded by explicit Q/DQ quantization) but
present in every 10.x; TensorRT 11 removed it (see `edgepipe.tensorrt.calibration.qdq`).

The cache file is TensorRT's own bytes; beside it, `CACHE.json` records which model (ONNX sha256) and
which input shape it was made for, so a cache made for another model is never fed to a build.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.files import atomic_write

log = logging.getLogger(__name__)


class CalibrationCache:
    """TensorRT's calibration cache bytes plus a small JSON of what they belong to."""

    def __init__(self, path: str | Path, onnx_sha256: str, input_shape: tuple[int, ...] | None = None,
                 info: dict[str, Any] | None = None):
        self.path = Path(path)
        self.onnx_sha256 = onnx_sha256
        self.input_shape = list(input_shape) if input_shape is not None else None
        self.info = dict(info or {})

    @property
    def meta_path(self) -> Path:
        return self.path.with_name(self.path.name + ".json")

    def read(self) -> bytes | None:
        """The cached bytes when they were made for this model; None (calibrate again) otherwise."""
        if not self.path.is_file():
            return None
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            log.warning("ignoring calibration cache %s: its %s is missing or unreadable", self.path, self.meta_path.name)
            return None
        if meta.get("onnx_sha256") != self.onnx_sha256:
            log.warning("ignoring calibration cache %s: it was made for another model (sha256 %s...)",
                        self.path, str(meta.get("onnx_sha256"))[:8])
            return None
        data = self.path.read_bytes()
        if not data:
            return None
        log.info("reusing calibration cache %s (delete it to calibrate again)", self.path)
        return data

    def write(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, bytes(data))
        meta = {"onnx_sha256": self.onnx_sha256, "input_shape": self.input_shape, **self.info}
        self.meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        log.info("wrote calibration cache %s (%d bytes)", self.path, len(data))


class BatchFeeder:
    """The data half of the calibrator, free of TensorRT: copies one batch at a time into one device
    buffer (through a pinned staging buffer) and hands TensorRT its address."""

    def __init__(self, batches, memory, batch_shape: tuple[int, int, int, int]):
        self.memory = memory
        self.batch_shape = tuple(batch_shape)
        self._batches = batches  # None: no data (only a cache can calibrate then)
        self._iter: Iterator[np.ndarray] | None = None
        self._buffers: tuple | None = None  # allocated on the first batch: a reused cache needs none
        self.count = 0

    def _allocate(self) -> tuple:
        if self._buffers is None:
            host_buf, host = self.memory.pinned_array(self.batch_shape, np.float32)
            self._buffers = (host_buf, host, self.memory.device_alloc(host.nbytes), self.memory.create_stream())
        return self._buffers

    @property
    def batch_size(self) -> int:
        return self.batch_shape[0]

    def next_pointers(self) -> list[int] | None:
        """[device address] of the next batch, or None when the data is used up (TensorRT's signal)."""
        if self._batches is None:
            return None
        if self._iter is None:
            self._iter = iter(self._batches)
        batch = next(self._iter, None)
        if batch is None:
            return None
        if batch.shape != self.batch_shape or batch.dtype != np.float32:
            raise EdgepipeError(f"calibration batch {batch.dtype} {batch.shape} does not match {self.batch_shape}")
        _, host, device, stream = self._allocate()
        with self.memory.activate():
            np.copyto(host, batch)
            self.memory.copy_htod_async(device, host, stream)
            # TensorRT reads the buffer on its own stream right after get_batch returns: finish the copy first.
            stream.synchronize()
        self.count += 1
        if self.count % 10 == 0:
            log.info("calibration: %d batch(es) fed", self.count)
        return [device.ptr]

    def close(self) -> None:
        if self._buffers is not None:
            host_buf, _, device, stream = self._buffers
            self._buffers = None
            for buf in (stream, device, host_buf):
                self.memory.free(buf)


def make_entropy_calibrator(trt, feeder: BatchFeeder, cache: CalibrationCache):
    """An `trt.IInt8EntropyCalibrator2` (made here because its base class exists only with TensorRT 10)."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # pybind11 trampoline: the base must be initialised
            self.feeder, self.cache = feeder, cache

        def get_batch_size(self) -> int:
            return self.feeder.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            try:
                return self.feeder.next_pointers()
            except Exception:  # an exception inside a TensorRT callback is only printed; log it properly
                log.exception("calibration batch failed; stopping calibration")
                return None

        def read_calibration_cache(self) -> bytes | None:
            return self.cache.read()

        def write_calibration_cache(self, data) -> None:
            self.cache.write(bytes(data))

    return EntropyCalibrator()
