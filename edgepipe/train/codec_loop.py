"""The real codec inside the training step: encode and decode a batch of crops, report their bytes.

Training on what the server sees means the recognizer's loss is taken on the *decoded* ED output. The
forward pass here is the pipeline's own codec (HEVC intra through PyAV/libx265, JPEG through OpenCV, JPEG 2000
through Pillow/OpenJPEG), at an operating point drawn per batch from a range given as `codec:LOW-HIGH`:

    hevc:31-47          libx265 intra QP 31..47 (preset medium, as `edgepipe eval` measures)
    jpeg:5-40           libjpeg quality 5..40
    jpeg2000-db:23-33   OpenJPEG, 9/7 wavelet, one quality layer stopping at 23..33 dB PSNR

The backward pass is straight-through (see `straight_through`): gradients reach the ED through a
differentiable model of the codec, while the loss sees the real quantisation error. The round trip and the
model live in edgepipe/media/codecs (round_trip.py, model.py), where the recognizer-guided pre-transform
uses them too; this module gathers what the training loop takes from there.
"""
from __future__ import annotations

from edgepipe.media.codecs.model import (  # noqa: F401 (re-exported)
    codec_proxy,
    hevc_qstep,
    jpeg2000_qstep,
    jpeg_qstep,
    qstep,
    straight_through,
)
from edgepipe.media.codecs.round_trip import CodecRoundTrip  # noqa: F401 (re-exported)
from edgepipe.train.codec_ranges import CodecRange, parse_ranges  # noqa: F401 (re-exported)
from edgepipe.train.config import BACKWARD  # noqa: F401 (re-exported)
