"""`edgepipe demo`: the whole pipeline on one machine, no camera, no GPU.

Labelled images are replayed as a camera through each pre-transform and HEVC at several QPs, sent
over ZeroMQ on loopback to a monitor in this process, which decodes, classifies and prints the
accuracy/bitrate table.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.options import flag
from edgepipe.edge.capture import CaptureLoop, CaptureSettings
from edgepipe.engines import load_engine
from edgepipe.recognition import DEFAULT_RECOGNIZER, RECOGNIZERS
from edgepipe.server.classify import ClassifyOptions, Recognizer
from edgepipe.server.monitor import Monitor
from edgepipe.transport.sockets import Publisher, Subscriber, free_tcp_endpoint

log = logging.getLogger(__name__)

DEFAULT_QPS = (27, 32, 37, 42)


def setting(default: Any, *name: str, **spec: Any) -> Any:
    return field(default=default, metadata=flag(*name, **spec))


@dataclass
class DemoSettings:
    """What `edgepipe demo` is asked to do: one field per setting, each carrying its flag and help (the command's
    options are made from them); `demo()` runs them."""
    data: Path | None = setting(None, path="dir", help="Labelled ImageNet-layout folder (default: the 50 bundled "
                                                       "Imagenette images).")
    engines: tuple[str, ...] = setting((), "--engine", multiple=True,
                                       help="Pre-transform(s) to compare (repeatable; default: none and the "
                                            "shipped ours).")
    qps: tuple[int, ...] = setting(DEFAULT_QPS, "--qp", multiple=True, min=0, max=51,
                                   help=f"HEVC QPs, 0-51 (repeatable; default {' '.join(map(str, DEFAULT_QPS))}).")
    recognizer: str = setting(DEFAULT_RECOGNIZER, choices=RECOGNIZERS, help="The recognizer on the monitor's side.")
    weights: str | None = setting(None, path="file", help="Recognizer weights (vgg16).")
    report_path: Path | None = setting(None, "--report", path="file", help="Write the report as JSON.")


def bundled_images() -> Path:
    return Path(str(resources.files("edgepipe.data"))) / "demo"


def default_engines() -> list[str]:
    """`none` and, once a trained model ships, `ours`."""
    shipped = Path(str(resources.files("edgepipe.data"))) / "models" / "ours.onnx"
    return ["none", "ours"] if shipped.exists() else ["none"]


def demo(settings: DemoSettings, say: Callable[[str], None] = log.info) -> dict:
    """`edgepipe demo`: the folder checked before the recognizer loads and sockets bind, the engines defaulted
    (`say` tells when only `none` is left), every pass run with a line to `say` after each; returns the monitor's
    report (the command prints it, then writes it to settings.report_path)."""
    from edgepipe.core.datasets import list_labelled_images

    s = settings
    if s.data:
        list_labelled_images(s.data)  # a wrong folder is named before the recognizer loads and sockets bind
    engines = list(s.engines) or default_engines()
    if not s.engines and engines == ["none"]:  # an install without the shipped model files
        say("demo: no trained pre-transform found, running with --engine none only")

    def progress(spec, qp, stats):
        say(f"demo: {spec:<12} QP {qp}: sent {stats.frames_sent} frames")

    return run_demo(s.data, engines, tuple(s.qps) or DEFAULT_QPS, s.recognizer, s.weights, progress=progress)


def run_demo(data: Path | None = None, engines: list[str] | None = None, qps: tuple[int, ...] = DEFAULT_QPS,
             recognizer: str = "efficientnet-lite0", weights: str | None = None, size: tuple[int, int] = (224, 224),
             endpoint: str | None = None, progress=None) -> dict:
    """Run every (engine, QP) pass through the real pipeline; returns the monitor's report."""
    from edgepipe.recognition import Classifier

    data = Path(data) if data else bundled_images()
    engines = engines or default_engines()
    loaded = {spec: load_engine(spec) for spec in engines}  # fail on a bad model before any socket opens
    classifier = Classifier(recognizer, weights)
    endpoint = endpoint or free_tcp_endpoint()
    publisher = Publisher(endpoint)
    subscriber = Subscriber(endpoint)
    # every frame is classified (policy `all`): the table's top-1 is over every image, as the demo promises
    monitor = Monitor(Recognizer.from_classifier(classifier), subscriber, classifying=ClassifyOptions(policy="all"))
    stop = threading.Event()
    thread = threading.Thread(target=monitor.run, args=(stop,), name="edgepipe-monitor", daemon=True)
    thread.start()
    try:
        if not publisher.wait_for_subscriber(10.0):
            raise EdgepipeError(f"the monitor did not join {endpoint} within 10 s")
        sent = 0  # messages: every frame, and each pass's end-of-stream message
        for spec, engine in loaded.items():
            for qp in qps:
                settings = CaptureSettings(source=f"folder:{data}", publish=endpoint, engine=spec, qp=qp, gop=0,
                                           preset="medium", size=size, crop=True, stream_id=spec[:32])
                loop = CaptureLoop(settings, engine=engine, publisher=publisher)
                stats = loop.run()
                sent += stats.frames_sent + (stats.end_of_stream == "sent")
                if progress:
                    progress(spec, qp, stats)
        # wait until the monitor has handled every message sent (or stops hearing anything)
        deadline = threading.Event()
        for _ in range(600):
            if monitor.settled >= sent:
                break
            deadline.wait(0.1)
    finally:
        stop.set()
        thread.join(timeout=30)
        publisher.close()
        subscriber.close()
    return monitor.report()
