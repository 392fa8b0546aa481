"""Real codecs: HEVC through PyAV (libx265, or hevc_nvenc on NVIDIA), JPEG and JPEG 2000 through OpenCV,
and a quality-driven JPEG 2000 through Pillow (OpenJPEG).

Two JPEG 2000 modes, both OpenJPEG writing a .jp2 file with one quality layer:
- "jpeg2000" is OpenCV's writer. It targets a *rate* (compression x1000), so the bits spent do not
  depend on the content: a pre-transform cannot lower them, only change the distortion. OpenCV leaves
  OpenJPEG's defaults: reversible 5/3 wavelet, no colour transform.
- "jpeg2000-db" targets a *quality*: the layer stops at a PSNR in dB, so a smoother input reaches it
  with fewer bits, as with a JPEG quality or an HEVC QP. Irreversible 9/7 wavelet and colour transform
  (the usual lossy JPEG 2000).

Every encoder reports the exact size in bytes of each encoded frame; bits per pixel are computed from
those sizes and nothing else. Frames are uint8 RGB (H, W, 3).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np

from edgepipe.core.errors import EdgepipeError

log = logging.getLogger(__name__)

HEVC_ENCODERS = ("libx265", "hevc_nvenc")
STILL_CODECS = ("jpeg", "jpeg2000", "jpeg2000-db", "hevc")
X265_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
# What each codec's one number means and accepts: HEVC QP (and CRF), JPEG quality, OpenCV's
# IMWRITE_JPEG2000_COMPRESSION_X1000 (OpenCV replaces anything outside 1..1000 by 1, with a warning each frame).
SETTING_RANGES = {"hevc": ("QP", 0, 51), "jpeg": ("quality", 1, 100), "jpeg2000": ("compression x1000", 1, 1000),
                  "jpeg2000-db": ("target dB", 1, 100)}  # stills only (eval, preview): not a stream codec
CRF_RANGE = (0, 51)


@dataclass(frozen=True)
class EncodedFrame:
    data: bytes
    keyframe: bool
    pts: int

    @property
    def size(self) -> int:
        return len(self.data)


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


def check_setting(codec: str, value: float) -> None:
    """One line naming the accepted range when a QP / quality / compression is out of it."""
    meaning, low, high = SETTING_RANGES[codec]
    if not low <= value <= high:
        raise EdgepipeError(f"{codec} {meaning} must be {low}..{high}, got {value:g}")


def check_hevc_options(preset: str, crf: float | None, encoder: str) -> None:
    if encoder == "libx265" and preset not in X265_PRESETS:
        raise EdgepipeError(f"unknown libx265 preset {preset!r}; choose one of {', '.join(X265_PRESETS)}")
    if crf is not None and not CRF_RANGE[0] <= crf <= CRF_RANGE[1]:
        raise EdgepipeError(f"hevc CRF must be {CRF_RANGE[0]}..{CRF_RANGE[1]}, got {crf:g}")


class HevcEncoder:
    """Low-latency HEVC: one packet out per frame in, no B-frames, no lookahead.

    gop=0 means intra-only. Parameter sets are repeated at every keyframe, so a decoder that joins
    mid-stream can start at the next keyframe. `force_keyframe` asks for an IDR frame now.
    """

    def __init__(self, width: int, height: int, qp: int | None = 32, crf: float | None = None,
                 gop: int = 30, preset: str = "ultrafast", encoder: str = "libx265", fps: float = 30.0,
                 threads: int | None = None):
        import av

        encoder = resolve_encoder(encoder)
        if (qp is None) == (crf is None):
            raise EdgepipeError("give exactly one of qp or crf")
        if qp is not None:
            check_setting("hevc", qp)
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
            rate = f"qp={qp}" if qp is not None else f"crf={crf}"
            params = f"{rate}:keyint={keyint}:min-keyint={keyint}:scenecut=0:repeat-headers=1:info=0:log-level=error"
            if threads == 1:
                # No thread pool (so no WPP) and one frame thread: on a loaded CPU, x265's per-CTU-row
                # handoffs made a 224x224 still take ~0.5 s wall for ~25 ms of CPU. Offline evaluation
                # runs one encoder per core instead.
                params += ":pools=none:frame-threads=1"
            ctx.options = {"preset": preset, "tune": "zerolatency", "x265-params": params, "forced-idr": "1"}
        else:  # hevc_nvenc: constant QP, low-latency tuning, no B-frames
            ctx.gop_size = keyint
            ctx.max_b_frames = 0
            opts = {"preset": "p1", "tune": "ll", "forced-idr": "1", "zerolatency": "1"}
            opts.update({"rc": "constqp", "qp": str(qp)} if qp is not None else {"rc": "vbr", "cq": str(int(crf))})
            ctx.options = opts
        ctx.open()
        self._ctx = ctx

    def encode(self, frame: np.ndarray, force_keyframe: bool = False) -> list[EncodedFrame]:
        import av

        if frame.shape[:2] != (self.height, self.width):
            raise ValueError(f"frame is {frame.shape[1]}x{frame.shape[0]}, encoder is {self.width}x{self.height}")
        # OpenCV's SIMD BT.601 conversion: ~12x faster than swscale at 720p, and it releases the GIL
        yuv = cv2.cvtColor(_pad_even(frame), cv2.COLOR_RGB2YUV_I420)
        vf = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
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


# --- still images -------------------------------------------------------------------------------

@functools.cache
def _pillow_jpeg2000():
    """Pillow's Image module, after checking it was built with OpenJPEG (one-line error otherwise)."""
    try:
        import PIL
        from PIL import Image, features
    except ImportError:
        raise EdgepipeError("codec jpeg2000-db needs Pillow with OpenJPEG: pip install 'pillow>=10'") from None
    if not features.check("jpg_2000"):
        raise EdgepipeError(f"this Pillow ({PIL.__version__}) was built without JPEG 2000 (OpenJPEG) support, "
                            "which codec jpeg2000-db needs: install a Pillow wheel from PyPI or rebuild with libopenjp2")
    return Image


def _encode_jpeg2000_db(image: np.ndarray, psnr_db: float) -> bytes:
    import io

    if not psnr_db > 0:
        raise EdgepipeError(f"jpeg2000-db setting is a target PSNR in dB and must be positive, got {psnr_db}")
    Image = _pillow_jpeg2000()
    buf = io.BytesIO()
    # quality_mode dB: OpenJPEG truncates the code-blocks where its distortion estimate reaches this
    # PSNR. mct=1: colour transform (Pillow's default is none, ~30 % more bytes for RGB).
    Image.fromarray(np.ascontiguousarray(image)).save(
        buf, "JPEG2000", quality_mode="dB", quality_layers=[float(psnr_db)], irreversible=True, mct=1)
    return buf.getvalue()


def _decode_jpeg2000_db(data: bytes) -> np.ndarray:
    import io

    Image = _pillow_jpeg2000()
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB")).copy()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ValueError(f"undecodable jpeg2000-db payload ({len(data)} bytes): {exc}") from None


def encode_image(codec: str, image: np.ndarray, quality: float, threads: int | None = None) -> bytes:
    """Encode one RGB image. quality: JPEG quality 1..100; JPEG 2000 compression x1000 (OpenCV's
    IMWRITE_JPEG2000_COMPRESSION_X1000, a target rate); jpeg2000-db: target PSNR in dB of the single
    quality layer; HEVC intra QP 0..51. Higher = more bits for all but HEVC (lower QP = more bits)."""

    if codec == "jpeg2000-db":
        return _encode_jpeg2000_db(image, quality)
    if codec in ("jpeg", "jpeg2000"):
        check_setting(codec, quality)
    if codec == "jpeg":
        ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif codec == "jpeg2000":
        ok, buf = cv2.imencode(".jp2", image[..., ::-1], [cv2.IMWRITE_JPEG2000_COMPRESSION_X1000, int(quality)])
    elif codec == "hevc":
        h, w = image.shape[:2]
        enc = HevcEncoder(w, h, qp=int(quality), gop=0, preset="medium", threads=threads)
        packets = enc.encode(image) + enc.flush()
        return b"".join(p.data for p in packets)
    else:
        raise EdgepipeError(f"unknown codec {codec!r}; choose one of {', '.join(STILL_CODECS)}")
    if not ok:
        raise EdgepipeError(f"OpenCV could not encode {codec} (is it in this OpenCV build?)")
    return buf.tobytes()


def decode_image(codec: str, data: bytes, width: int | None = None, height: int | None = None) -> np.ndarray:

    if codec == "jpeg2000-db":
        return _decode_jpeg2000_db(data)
    if codec in ("jpeg", "jpeg2000"):
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"undecodable {codec} payload ({len(data)} bytes)")
        return np.ascontiguousarray(bgr[..., ::-1])
    if codec == "hevc":
        frames = HevcDecoder().decode(data, width, height)
        if not frames:
            raise ValueError(f"undecodable hevc payload ({len(data)} bytes)")
        return frames[0]
    raise EdgepipeError(f"unknown codec {codec!r}; choose one of {', '.join(STILL_CODECS)}")


def bits_per_pixel(num_bytes: int, width: int, height: int) -> float:
    """bpp = encoded bytes x 8 / pixels of the coded image."""
    return num_bytes * 8.0 / (width * height)
