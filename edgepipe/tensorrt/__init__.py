"""Offline TensorRT tooling: the plan builder (build.py, `edgepipe build-engine`) and INT8 calibration
(calibration/, `edgepipe calibrate`). Runtime engines that load a plan live in edgepipe.engines."""
