"""What `edgepipe build-engine` and `edgepipe calibrate` are asked to do: BuildSettings and CalibrateSettings,
one field per setting, each carrying its flag and help.

The commands' options are made from these fields (commands/build_engine.py, commands/calibrate.py; each keeps
its MODEL argument, which arrives here as `model`), and `tensorrt.build.build_engine()` and
`tensorrt.calibration.run.calibrate()` run them. A new setting is one field here and its use. Nothing heavy at
import (no TensorRT, numpy or OpenCV): --help runs on a machine without them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepipe.core.options import flag

DEFAULT_SHAPES = "32x32:1280x720:1920x1080"  # min:opt:max as WIDTHxHEIGHT (like `capture --size`)
DEFAULT_WORKSPACE = "1G"
PRECISIONS = ("fp32", "fp16", "int8")
FORMATS = ("auto", "cache", "qdq")


def setting(default: Any, *name: str, **spec: Any) -> Any:
    return field(default=default, metadata=flag(*name, **spec))


def default_cache_path(onnx: Path) -> Path:
    """Where `calibrate` writes and `build-engine --precision int8` looks for a TensorRT 10 cache."""
    return Path.cwd() / f"{onnx.stem}.calib"


@dataclass
class BuildSettings:
    model: str  # the command's MODEL argument: an ONNX path or a shipped model name
    output: Path | None = setting(None, short="-o", path="file",
                                  help="Plan file to write [default: ./MODEL-PRECISION.plan].")
    precision: str = setting("fp16", choices=PRECISIONS,
                             help="fp32 (TF32 off), fp16 or int8 (its scales from --calib-data, a calibration "
                                  "cache or a Q/DQ model made by `edgepipe calibrate`).")
    shapes: str = setting(DEFAULT_SHAPES, help="Input sizes MIN:OPT:MAX, each WIDTHxHEIGHT (or NCHW as Nx3xHxW). "
                                               "OPT is tuned for.")
    max_batch: int = setting(1, help="Largest batch the plan accepts.")
    workspace: str = setting(DEFAULT_WORKSPACE, help="Builder scratch memory limit, e.g. 512M, 2G.")
    calib_data: Path | None = setting(None, path="dir",
                                      help="int8: folder of real images to calibrate on (labelled or flat).")
    calib_cache: Path | None = setting(None, path="file", help="int8 on TensorRT 10: calibration cache, reused "
                                                               "when valid [default: ./MODEL.calib].")
    calib_size: str = setting("224x224", help="int8: calibration WIDTHxHEIGHT.")
    calib_batch: int = setting(8, help="int8: calibration images per batch.")
    calib_images: int = setting(512, help="At most this many images.")
    progress: bool = setting(True, "--no-progress", invert=True, help="No status line during the build.")

    def options(self):
        """The builder's BuildOptions: every check that needs no file and no TensorRT, so a typo is named
        before a missing model or install."""
        from edgepipe.tensorrt.build import BuildOptions, Int8Options, parse_shapes, parse_size, parse_workspace

        return BuildOptions(
            precision=self.precision, shapes=parse_shapes(self.shapes, self.max_batch),
            workspace=parse_workspace(self.workspace),
            int8=Int8Options(data=self.calib_data, cache=self.calib_cache, size=parse_size(self.calib_size),
                             batch_size=self.calib_batch, max_images=self.calib_images),
            progress=self.progress,
        )


@dataclass
class CalibrateSettings:
    model: str  # the command's MODEL argument: an ONNX path or a shipped model name
    data: Path = field(metadata=flag(path="dir", help="Folder of real images (ImageNet layout or flat)."))
    output: Path | None = setting(None, short="-o", path="file",
                                  help="Cache file [./MODEL.calib] or Q/DQ model [./MODEL.int8.onnx].")
    format: str = setting("auto", choices=FORMATS,
                          help="cache: TensorRT 10 calibration cache; qdq: Q/DQ ONNX via ModelOpt (TensorRT 11).")
    size: str = setting("224x224", help="Calibration WIDTHxHEIGHT (centre-crop + resize).")
    batch_size: int = setting(8, "--batch", help="Images per calibration batch.")
    max_images: int = setting(512, "--images", help="At most this many images.")
    workspace: str = setting(DEFAULT_WORKSPACE, help="TensorRT builder workspace (cache format).")
