"""HEVC through PyAV: libx265 on the CPU, or hevc_nvenc on NVIDIA GPUs.

A low-latency stream encoder for the capture loop (one packet out per frame in, no B-frames, keyframes
on demand), its decoder, and single intra-coded images for evaluation. Every encoder reports the exact size
in bytes of each encoded frame; frames are uint8 RGB (H, W, 3), converted to 4:2:0 with OpenCV's BT.601.
"""
from __future__ import annotations

import functools
import logging
from fractions import Fraction

import cv2
import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.media.codecs.base import Codec, EncodedFrame, QualitySetting, register_codec

log = logging.getLogger(__name__)

HEVC_ENCODERS = ("libx265", "hevc_nvenc")
X265_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
SETTING = QualitySetting("QP", 0, 51, report_name="QP")
CRF_RANGE = (0, 51)


def _pad_even(frame: np.ndarray) -> np.ndarray:
    """4:2:0 needs even sizes: replicate the last row/column where needed."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def hevc_encoder_available(name: str) -> bool:
    import av

    try:
        av.codec.Codec(name, "w")
    except Exception:  # av raises UnknownCodecError / FFmpegError depending on the version
        return False
    return True


@functools.cache
def _nvenc_failure() -> str | None:
    """Why hevc_nvenc cannot open here (None: it can). FFmpeg builds carry it on machines without an NVIDIA
    GPU or driver, so only a real open tells; a tiny one, once per process."""
    import av

    ctx = av.CodecContext.create("hevc_nvenc", "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = 256, 256, "yuv420p", Fraction(1, 30)
    try:
        ctx.open()
    except av.FFmpegError as exc:
        return exc.strerror
    return None


def check_hevc_support(encoder: str = "libx265") -> None:
    """Fail early, in one line, when this PyAV build cannot encode HEVC (PyAV 14.3/14.4 wheels lack libx265)
    or when hevc_nvenc has no usable NVIDIA GPU behind it."""
    if not hevc_encoder_available(encoder):
        import av

        raise EdgepipeError(
            f"this PyAV build ({av.__version__}) has no {encoder} encoder; "
            "PyAV 14.3/14.4 wheels lack libx265 - install another version, e.g. pip install 'av>=15'"
        )
    if encoder == "hevc_nvenc" and (reason := _nvenc_failure()):
        raise EdgepipeError(f"no usable NVIDIA encoder on this machine (hevc_nvenc: {reason}); "
                            "use encoder libx265 (CPU) or auto")


@functools.cache
def resolve_encoder(encoder: str) -> str:
    """`auto` -> hevc_nvenc when it opens here, else libx265 (said once); a named encoder is checked."""
    if encoder != "auto":
        check_hevc_support(encoder)
        return encoder
    if hevc_encoder_available("hevc_nvenc") and _nvenc_failure() is None:
        return "hevc_nvenc"
    log.warning("encoder auto: no usable NVIDIA encoder (hevc_nvenc) here, using libx265 on the CPU")
    check_hevc_support("libx265")
    return "libx265"


def check_hevc_options(preset: str, crf: float | None, encoder: str) -> None:
    if encoder == "libx265" and preset not in X265_PRESETS:
        raise EdgepipeError(f"unknown libx265 preset {preset!r}; choose one of {', '.join(X265_PRESETS)}")
    if crf is not None and not CRF_RANGE[0] <= crf <= CRF_RANGE[1]:
        raise EdgepipeError(f"hevc CRF must be {CRF_RANGE[0]}..{CRF_RANGE[1]}, got {crf:g}")


def x265_params(qp: int | None, crf: float | None, keyint: int, threads: int | None = None,
                pool_threads: int | None = None) -> str:
    """libx265's parameter string for a low-latency stream (with tune zerolatency: one frame thread).

    threads=1: no thread pool, so no wavefronts (WPP): evaluation's single-threaded stills, a bitstream of
    their own. pool_threads=N: the capture's budget, N worker threads for the wavefront rows; WPP stays on,
    so the bitstream is the same for any N (x265's default pool has one thread per core).
    """
    if threads is not None and pool_threads is not None:
        raise ValueError("give threads (1: single-threaded, no WPP) or pool_threads, not both")
    rate = f"qp={qp}" if qp is not None else f"crf={crf}"
    params = f"{rate}:keyint={keyint}:min-keyint={keyint}:scenecut=0:repeat-headers=1:info=0:log-level=error"
    if threads == 1:
        # No thread pool (so no WPP) and one frame thread: on a loaded CPU, x265's per-CTU-row
        # handoffs made a 224x224 still take ~0.5 s wall for ~25 ms of CPU. Offline evaluation
        # runs one encoder per core instead.
        params += ":pools=none:frame-threads=1"
    elif pool_threads is not None:
        if pool_threads < 1:
            raise ValueError(f"pool_threads must be at least 1, got {pool_threads}")
        params += f":pools={pool_threads}:frame-threads=1"
    return params


def _video_frame(yuv: np.ndarray):
    """A yuv420p VideoFrame of an I420 array (height * 3 / 2, width), without copying it where PyAV can.

    from_numpy_buffer wraps the array's buffer (and holds a reference to it) where from_ndarray copies it
    once more; PyAV 18 derives the height as rows // 6 * 4, which is only right for heights divisible by 4.
    """
    import av

    if (yuv.shape[0] * 2 // 3) % 4 == 0:
        return av.VideoFrame.from_numpy_buffer(yuv, format="yuv420p")
    return av.VideoFrame.from_ndarray(yuv, format="yuv420p")


class HevcEncoder:
    """Low-latency HEVC: one packet out per frame in, no B-frames, no lookahead.

    gop=0 means intra-only. Parameter sets are repeated at every keyframe, so a decoder that joins
    mid-stream can start at the next keyframe. `force_keyframe` asks for an IDR frame now.
    Threads (libx265): see x265_params; hevc_nvenc ignores them.
    """

    def __init__(self, width: int, height: int, qp: int | None = 32, crf: float | None = None,
                 gop: int = 30, preset: str = "ultrafast", encoder: str = "libx265", fps: float = 30.0,
                 threads: int | None = None, pool_threads: int | None = None):
        import av

        encoder = resolve_encoder(encoder)
        if (qp is None) == (crf is None):
            raise EdgepipeError("give exactly one of qp or crf")
        if qp is not None:
            SETTING.check("hevc", qp)
        check_hevc_options(preset, crf, encoder)
        self.width, self.height = width, height
        self.qp, self.crf, self.gop, self.encoder = qp, crf, gop, encoder
        self._pts = 0
        ctx = av.CodecContext.create(encoder, "w")
        ctx.width, ctx.height = width + width % 2, height + height % 2
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = Fraction(1, 1000)
        ctx.framerate = Fraction(fps).limit_denominator(1001)
        keyint = 1 if gop <= 0 else gop
        if encoder == "libx265":
            params = x265_params(qp, crf, keyint, threads, pool_threads)
            self.options = {"preset": preset, "tune": "zerolatency", "x265-params": params, "forced-idr": "1"}
        else:  # hevc_nvenc: constant QP, low-latency tuning, no B-frames
            ctx.gop_size = keyint
            ctx.max_b_frames = 0
            opts = {"preset": "p1", "tune": "ll", "forced-idr": "1", "zerolatency": "1"}
            opts.update({"rc": "constqp", "qp": str(qp)} if qp is not None else {"rc": "vbr", "cq": str(int(crf))})
            self.options = opts
        ctx.options = dict(self.options)  # what the encoder was opened with, kept readable
        ctx.open()
        self._ctx = ctx

    def encode(self, frame: np.ndarray, force_keyframe: bool = False) -> list[EncodedFrame]:
        import av

        if frame.shape[:2] != (self.height, self.width):
            raise ValueError(f"frame is {frame.shape[1]}x{frame.shape[0]}, encoder is {self.width}x{self.height}")
        # OpenCV's SIMD BT.601 conversion: ~12x faster than swscale at 720p, and it releases the GIL
        yuv = cv2.cvtColor(_pad_even(frame), cv2.COLOR_RGB2YUV_I420)
        vf = _video_frame(yuv)
        vf.pts = self._pts
        self._pts += 1
        if force_keyframe or self.gop <= 0:
            vf.pict_type = av.video.frame.PictureType.I
        return self._packets(self._ctx.encode(vf))

    def flush(self) -> list[EncodedFrame]:
        return self._packets(self._ctx.encode(None))

    @staticmethod
    def _packets(packets) -> list[EncodedFrame]:
        return [EncodedFrame(bytes(p), bool(p.is_keyframe), int(p.pts or 0)) for p in packets]


def _to_rgb(frame) -> np.ndarray:
    """Decoded frame -> RGB with the same BT.601 matrix the encoder used (OpenCV, fast)."""
    if frame.format.name == "yuv420p":
        return cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2RGB_I420)
    return frame.to_ndarray(format="rgb24")


class HevcDecoder:
    """Decodes one packet at a time; returns RGB frames cropped to (height, width) when given."""

    def __init__(self):
        import av

        self._ctx = av.CodecContext.create("hevc", "r")

    def decode(self, data: bytes, width: int | None = None, height: int | None = None) -> list[np.ndarray]:
        import av

        frames = self._ctx.decode(av.Packet(data))
        out = [_to_rgb(f) for f in frames]
        if width and height:
            out = [f[:height, :width] for f in out]
        return out


# --- single images (intra) ----------------------------------------------------------------------

def encode_still(image: np.ndarray, qp: float, threads: int | None = None) -> bytes:
    """One intra frame at QP, preset medium (as evaluation has always coded it)."""
    h, w = image.shape[:2]
    enc = HevcEncoder(w, h, qp=int(qp), gop=0, preset="medium", threads=threads)
    packets = enc.encode(image) + enc.flush()
    return b"".join(p.data for p in packets)


def decode_still(data: bytes, width: int | None = None, height: int | None = None) -> np.ndarray:
    frames = HevcDecoder().decode(data, width, height)
    if not frames:
        raise ValueError(f"undecodable hevc payload ({len(data)} bytes)")
    return frames[0]


HEVC = register_codec(Codec(
    name="hevc", title="HEVC intra", setting=SETTING, caption="HEVC QP {}", default_setting=37,
    encode=encode_still, decode=decode_still, wire_id=1, stream_encoder=HevcEncoder, crf_range=CRF_RANGE,
    check_available=check_hevc_support,
    # libx265 intra QP, preset medium, at 224x224: QP 51 ~0.10 bpp, QP 30 ~1.4 bpp
    candidates=(51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29),
))
