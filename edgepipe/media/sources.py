"""Frame sources, chosen by one string (see `open_source`):

    /dev/video0, 0          V4L2 camera through OpenCV (live: reopened with back-off)
    rtsp://..., http://...  network stream through OpenCV/FFmpeg (live: reopened with back-off)
    clip.mp4                video file through PyAV (ends cleanly)
    folder:PATH             labelled ImageNet-layout folder replayed as a camera (ends cleanly)
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from edgepipe.core.datasets import list_labelled_images, read_rgb
from edgepipe.core.errors import EdgepipeError
from edgepipe.media.frames import Frame, ReadStatus

log = logging.getLogger(__name__)

LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class Source(Protocol):
    name: str
    live: bool  # live sources drop frames when the pipeline falls behind; files and folders wait
    fps: float | None  # native rate when known
    # whether frames carry `media_time` from the source's own timestamps (video files); otherwise
    # the capture derives the stream clock (index / rate for files and folders, capture clock if live)
    timestamps: bool

    def read(self) -> tuple[ReadStatus, Frame | None]: ...

    def close(self) -> None: ...


class FrameShaper:
    """Resize (or centre-crop then resize) to a set size; sizes are made even for 4:2:0 codecs."""

    def __init__(self, size: tuple[int, int] | None, crop: bool = False):
        self.size = None if size is None else (size[0] - size[0] % 2, size[1] - size[1] % 2)
        self.crop = crop

    def box(self, w: int, h: int) -> tuple[int, int, int, int]:
        """The part of a w x h frame kept: x0, y0, width, height (the whole frame unless cropping)."""
        if self.size is None or not self.crop:
            return 0, 0, w, h
        tw, th = self.size
        scale = max(tw / w, th / h)
        cw, ch = round(tw / scale), round(th / scale)
        return (w - cw) // 2, (h - ch) // 2, cw, ch

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import cv2

        h, w = image.shape[:2]
        if self.size is None:
            return image if (h % 2 == 0 and w % 2 == 0) else image[: h - h % 2, : w - w % 2]
        tw, th = self.size
        x0, y0, cw, ch = self.box(w, h)
        image = image[y0:y0 + ch, x0:x0 + cw]
        if image.shape[:2] == (th, tw):
            return image
        return cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA)

    def from_i420(self, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray | None:
        """RGB at the set size from the planes of a 4:2:0 frame (BT.601, limited range), cropped and scaled
        in the planes and converted once at the final size: converting the whole frame first and scaling
        its RGB costs twice as much (2.0 against 1.0 ms of CPU a frame, 768x432 to 224x224). None when the
        geometry does not split evenly into the half-size chroma planes (the caller converts first)."""
        import cv2

        if self.size is None:
            return None
        h, w = y.shape
        x0, y0, cw, ch = self.box(w, h)
        tw, th = self.size
        if (w | h | x0 | y0 | cw | ch) % 2 or tw * th >= cw * ch:
            return None  # odd geometry; or no downscaling, where converting first is as cheap or cheaper
        i420 = np.empty((th * 3 // 2, tw), np.uint8)  # Y, then U and V (th/2 x tw/2 each) packed one after the other
        cv2.resize(y[y0:y0 + ch, x0:x0 + cw], (tw, th), dst=i420[:th], interpolation=cv2.INTER_AREA)
        flat, n = i420.reshape(-1), (tw // 2) * (th // 2)
        cx, cy, cwc, chc = x0 // 2, y0 // 2, cw // 2, ch // 2
        for k, plane in enumerate((u, v)):
            scaled = cv2.resize(plane[cy:cy + chc, cx:cx + cwc], (tw // 2, th // 2), interpolation=cv2.INTER_AREA)
            flat[tw * th + k * n: tw * th + (k + 1) * n] = scaled.reshape(-1)
        return cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420)


def bgr_to_rgb(image: np.ndarray) -> np.ndarray:
    """A new contiguous RGB frame. Cameras give BGR: shaping first and swapping after swaps the frame at its
    final size, once (resizing treats each channel alike, so the pixels are the same either way)."""
    import cv2

    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def set_opencv_threads(threads: int | None) -> int:
    """Set OpenCV's pool (process-wide: resizing here, the encoder's colour conversion) to `threads`;
    None leaves it. Returns the count before, to put back."""
    import cv2

    before = cv2.getNumThreads()
    if threads is not None:
        cv2.setNumThreads(threads)
    return before


class FolderSource:
    """Replays a labelled image folder as a camera; each frame carries its ImageNet label.
    Unreadable images are skipped, counted and logged."""

    live = False
    timestamps = False  # a folder has no clock: the capture's --fps (or frames.DEFAULT_FPS) is its rate

    def __init__(self, root: str | Path, shaper: FrameShaper, loop: bool = False):
        self.items = list_labelled_images(root)
        self.name = f"folder:{root}"
        self.fps = None
        self.skipped = 0
        self._shaper, self._loop, self._pos, self._index = shaper, loop, 0, 0

    def read(self) -> tuple[ReadStatus, Frame | None]:
        while True:
            if self._pos >= len(self.items):
                if not self._loop:
                    return ReadStatus.EOS, None
                self._pos = 0
            item = self.items[self._pos]
            self._pos += 1
            image = read_rgb(item.path)
            if image is None:
                self.skipped += 1
                log.warning("skipped unreadable image %s (%d so far)", item.path, self.skipped)
                continue
            frame = Frame(self._shaper(image), self._index, time.time(), item.label)
            self._index += 1
            return ReadStatus.OK, frame

    def close(self) -> None:
        pass


class VideoFileSource:
    """A video file decoded with PyAV (first video stream; audio ignored). Each frame carries its
    presentation time (`media_time`, seconds from the first frame; a loop goes on counting), so
    kbit/s is measured on the video's own clock. A still image (FFmpeg's image2 and *_pipe
    demuxers) has no clock: like a folder, it takes the capture's --fps."""

    live = False

    def __init__(self, path: str | Path, shaper: FrameShaper, loop: bool = False, threads: int | None = None):
        import av

        self.name, self._path, self._shaper, self._loop = str(path), str(path), shaper, loop
        try:
            self._container = av.open(self._path)
        except PermissionError:
            raise EdgepipeError(f"cannot read {path}: permission denied") from None
        except av.FFmpegError as exc:
            raise EdgepipeError(f"{path} is not a video or image FFmpeg can read ({exc.strerror})") from None
        if not self._container.streams.video:
            self._container.close()
            raise EdgepipeError(f"{path} has no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"  # only before the codec opens: a loop's rewind reuses the open decoder
        if threads:
            stream.codec_context.thread_count = threads  # FFmpeg's default: one per core
        fmt = self._container.format.name
        self.timestamps = not (fmt == "image2" or fmt.endswith("_pipe"))  # a still image has no clock
        self.fps = float(stream.average_rate) if stream.average_rate and self.timestamps else None
        self._index = 0
        self._first: float | None = None  # time of the first frame: media times count from it
        self._offset = 0.0  # added on each loop, so media time never goes back
        self._last: float | None = None  # media time of the previous frame
        self._interval = 1.0 / self.fps if self.fps else 0.04  # a frame's duration when its own is unknown
        self._frames = self._decode()

    def _decode(self):
        for frame in self._container.decode(self._container.streams.video[0]):
            yield self._shaped_rgb(frame), frame.time, frame.duration, frame.time_base

    def _shaped_rgb(self, frame) -> np.ndarray:
        """The frame as RGB at the shaper's size. Most camera files are BT.601 limited-range 4:2:0: those
        are cropped and scaled in their planes and converted once (FrameShaper.from_i420); anything else
        goes through FFmpeg's RGB conversion at full size, then the shaper."""
        if (frame.format.name == "yuv420p" and frame.color_range != 2  # 2: full range (JPEG)
                and frame.colorspace in (2, 5, 6)):  # unspecified, BT.470BG, SMPTE 170M: BT.601's matrix
            h, w = frame.height, frame.width  # odd sizes: from_i420 declines them
            y, u, v = (np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[:ph, :pw]
                       for p, pw, ph in zip(frame.planes, (w, w // 2, w // 2), (h, h // 2, h // 2)))
            rgb = self._shaper.from_i420(y, u, v)
            if rgb is not None:
                return rgb
        return self._shaper(frame.to_ndarray(format="rgb24"))

    def _media_time(self, time_s: float | None, duration, time_base) -> float | None:
        if not self.timestamps:
            return None
        if time_s is None:  # a frame without a timestamp: one interval after the previous one
            media = 0.0 if self._last is None else self._last + self._interval
        else:
            if self._first is None:
                self._first = time_s
            media = self._offset + time_s - self._first
            if self._last is not None and media < self._last:  # never backwards (broken timestamps)
                media = self._last
        if duration and time_base:
            self._interval = float(duration * time_base)
        self._last = media
        return media

    def read(self) -> tuple[ReadStatus, Frame | None]:
        import av

        try:
            image, time_s, duration, time_base = next(self._frames)
        except StopIteration:
            if not self._loop or self._index == 0:  # a file without a single frame would rewind forever
                return ReadStatus.EOS, None
            self._container.seek(0)  # also flushes the decoder
            self._frames = self._decode()
            if self._last is not None:  # the next pass starts one frame after this one's last
                self._offset, self._first = self._last + self._interval, None
            return self.read()
        except av.FFmpegError as exc:  # a corrupt tail ends the file, it does not crash the loop
            log.warning("video %s ended with a decode error: %s", self._path, exc)
            return ReadStatus.EOS, None
        frame = Frame(image, self._index, time.time(), media_time=self._media_time(time_s, duration, time_base))
        self._index += 1
        return ReadStatus.OK, frame

    def close(self) -> None:
        self._container.close()


class LiveSource:
    """A camera or network stream through OpenCV. When it fails mid-stream it is reopened with
    exponential back-off (0.5 s doubling to 10 s); reads during the outage return TIMEOUT.
    Its stream clock is the capture clock (the capture derives media times from capture times)."""

    live = True
    timestamps = False

    def __init__(self, target: str | int, shaper: FrameShaper, backoff: tuple[float, float] = (0.5, 10.0),
                 threads: int | None = None):
        self.name = str(target)
        self._target, self._shaper, self._threads = target, shaper, threads
        self._backoff_min, self._backoff_max = backoff
        self._backoff = self._backoff_min
        self._next_try = 0.0
        self._index = 0
        self.reconnects = 0  # successful reopens
        self.failures = 0  # times the source dropped mid-stream
        self.open_attempts = 0  # reopen tries, failed or not: the watchdog's sign of life while it is down
        self.retry_in_s = 0.0  # the back-off now in force (0 while connected), for metrics
        self._cap = self._open()
        if self._cap is None:
            raise EdgepipeError(_open_failure(target))
        fps = self._cap.get(5)  # cv2.CAP_PROP_FPS
        self.fps = fps if fps and fps > 0 else None

    def _open(self):
        import cv2

        camera = _is_camera(self._target)
        backend = cv2.CAP_V4L2 if camera else cv2.CAP_FFMPEG
        # decoder threads: for the FFmpeg back end (streams); a V4L2 camera has no decoder pool to size
        params = [cv2.CAP_PROP_N_THREADS, self._threads] if self._threads and not camera else []
        with _quiet_opencv():
            cap = cv2.VideoCapture(self._target, backend, params)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def read(self) -> tuple[ReadStatus, Frame | None]:
        if self._cap is None:
            if time.monotonic() < self._next_try:
                time.sleep(min(0.05, self._next_try - time.monotonic()))
                return ReadStatus.TIMEOUT, None
            self.open_attempts += 1
            self._cap = self._open()
            if self._cap is None:
                log.warning("source %s still unavailable; next try in %.1f s", self.name, self._backoff)
                self._schedule_retry()
                return ReadStatus.TIMEOUT, None
            self.reconnects += 1
            self._backoff = self._backoff_min
            self.retry_in_s = 0.0
            log.warning("source %s reopened (reconnect %d)", self.name, self.reconnects)
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            self.failures += 1
            log.warning("source %s failed; reopening in %.1f s", self.name, self._backoff)
            self._cap.release()
            self._cap = None
            self._schedule_retry()
            return ReadStatus.TIMEOUT, None
        frame = Frame(bgr_to_rgb(self._shaper(bgr)), self._index, time.time())
        self._index += 1
        return ReadStatus.OK, frame

    @property
    def connected(self) -> bool:
        return self._cap is not None

    def _schedule_retry(self) -> None:
        self.retry_in_s = self._backoff
        self._next_try = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._backoff_max)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _is_camera(target: str | int) -> bool:
    return isinstance(target, int) or str(target).startswith("/dev/")


@contextlib.contextmanager
def _quiet_opencv():
    """A failed open makes OpenCV and its bundled FFmpeg print lines of their own; ours is the one that counts."""
    import cv2

    # AV_LOG_QUIET for OpenCV's FFmpeg (not PyAV's): OpenCV reads it once, at its first FFmpeg open
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def _open_failure(target: str | int) -> str:
    if _is_camera(target):
        return (f"cannot open camera {target}: it is busy (another program uses it), not a capture device, "
                "or this user lacks access (group video)")
    return f"cannot open stream {target}: check the address, the credentials and that the camera is reachable"


def open_source(spec: str, size: tuple[int, int] | None = None, crop: bool = False, loop: bool = False,
                threads: int | None = None) -> Source:
    """Pick the source from one string; unknown or missing ones are a one-line error.

    threads: the decoder's (video files and streams; None: FFmpeg's default, one per core). Resizing runs
    on OpenCV's process-wide pool: set_opencv_threads."""
    shaper = FrameShaper(size, crop)
    if spec.startswith("folder:"):
        return FolderSource(spec[len("folder:"):], shaper, loop)
    if spec.isdigit() or spec.startswith("/dev/video"):
        device = f"/dev/video{spec}" if spec.isdigit() else spec
        if not os.path.exists(device):
            raise EdgepipeError(f"camera {spec} does not exist: no {device} on this machine")
        return LiveSource(int(spec) if spec.isdigit() else spec, shaper, threads=threads)
    if spec.startswith(LIVE_SCHEMES):
        return LiveSource(spec, shaper, threads=threads)
    if re.match(r"[a-z][a-z0-9+.-]+:", spec, re.IGNORECASE) and not spec.startswith("file://"):
        raise EdgepipeError(f"unknown source {spec!r}: streams are {', '.join(LIVE_SCHEMES)}; "
                            "otherwise use /dev/videoN or an index, a video file, or folder:PATH")
    path = Path(spec[len("file://"):] if spec.startswith("file://") else spec)
    if path.is_file():
        return VideoFileSource(path, shaper, loop, threads)
    if path.is_dir():
        raise EdgepipeError(f"{spec} is a folder: use folder:{spec} to replay labelled images")
    if "/" in spec or path.suffix:  # meant as a file
        raise EdgepipeError(f"source {spec} does not exist: give a video file, folder:PATH, /dev/videoN or an index, "
                            "or rtsp://...")
    raise EdgepipeError(f"unknown source {spec!r}: no such file here, and not /dev/videoN or an index, rtsp://..., "
                        "or folder:PATH")


def parse_size(text: str | None, min_side: int = 16, max_side: int = 8192) -> tuple[int, int] | None:
    """'224x224' -> (224, 224): WIDTHxHEIGHT, the one size syntax of every edgepipe command.

    Bounded on both sides: a typo such as 99999x99999 would otherwise ask for a 30 GB frame."""
    if not text:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise EdgepipeError(f"size must look like WIDTHxHEIGHT, e.g. 224x224, got {text!r}") from None
    if not (min_side <= w <= max_side and min_side <= h <= max_side):
        raise EdgepipeError(f"size {text} is out of range: each side must be {min_side}..{max_side}")
    return w, h
