"""What `edgepipe monitor` is asked to do: MonitorSettings, one field per setting, each carrying its flag and help.

The command's options are made from these fields (commands/monitor.py; its own are the config file, the CURVE
secret key and --insecure, shared with the capture, and the status line), it checks them, and the methods here
turn them into what the service takes: the stream selection, the classify options, the service options and the
recognizer. A new setting is one field here and its use. Nothing heavy at import: --help runs without torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgepipe.core.options import flag
from edgepipe.ops.service import SecurityOptions, ServiceOptions
from edgepipe.recognition import DEFAULT_RECOGNIZER, RECOGNIZERS, VIEWS
from edgepipe.server.classify import POLICIES, ClassifyOptions
from edgepipe.server.engine_trial import TRIAL_DEFAULTS
from edgepipe.server.live_rd import DEFAULT_WINDOW_S
from edgepipe.server.qp_control import DEFAULT_MEASURE, LOOP_DEFAULTS
from edgepipe.server.qp_control import MEASURES as LOOP_MEASURES

# The command's classify defaults: a live camera never waits for its recognizer (the library's is `all`).
CLASSIFY_DEFAULTS = ClassifyOptions(policy="keyframes-first")
# the settings that say how frames are classified: none of them goes with --no-classify
CLASSIFY_FLAGS = ("classify_policy", "classify_every", "classify_queue", "classify_batch", "predictions")


def setting(default: Any, *name: str, **spec: Any) -> Any:
    return field(default=default, metadata=flag(*name, **spec))


@dataclass
class MonitorSettings:
    connect: str = field(metadata=flag(help="ZeroMQ endpoint of a capture, e.g. tcp://camera:5555, or of a relay's "
                                            "monitors side, e.g. tcp://relay:5556."))
    streams: str | None = setting(None, metavar="ID,ID", help="Take only these streams (their ids, comma-separated), "
                                                              "e.g. cam1,cam3 [default: every stream].")
    shard: str | None = setting(None, metavar="K/N",
                                help="Take one shard of the streams, by hash: those whose bucket (the first byte of "
                                     "SHA-256 of the stream id) % N == K; N monitors with 0/N .. N-1/N take every "
                                     "stream once. N is 1..256.")
    control: str | None = setting(None, help="The capture's control endpoint, e.g. tcp://camera:5556: ask for a "
                                             "keyframe after a loss. It goes straight to the capture, never through "
                                             "a relay (docs/relay.md).")
    server_key: str | None = setting(None, help="The capture's CURVE public key: a .key file, z85:KEY or "
                                                "credential:NAME.")
    metrics: str | None = setting(None, help="Serve Prometheus metrics on PORT, :PORT or HOST:PORT.")
    dashboard: str | None = setting(None, metavar="HOST:PORT",
                                    help="Serve a live web page on HOST:PORT (PORT alone: 127.0.0.1; :PORT: every "
                                         "interface): per stream, the RD curve (kbit/s against top-1 and agreement "
                                         "per operating point), bitrate, losses and the operating point, updated "
                                         "every second; docs/monitor.md.")
    recognizer: str = setting(DEFAULT_RECOGNIZER, choices=RECOGNIZERS,
                              help="Recognizer of the decoded frames (vgg16 needs --weights).")
    weights: str | None = setting(None, path="file", help="Recognizer weights (vgg16).")
    recognizer_view: str = setting("centre-crop", choices=VIEWS,
                                   help="What the recognizer sees of a frame: its centre square at 224 (as trained; a "
                                        "720p frame costs what a 224 one does), the whole frame as it is, or square "
                                        "tiles across it, probabilities averaged.")
    recognizer_server: str | None = setting(None, metavar="grpc://HOST:PORT",
                                            help="Classify on an NVIDIA Triton server (model: the --recognizer "
                                                 "name); see docs/triton.md.")
    no_classify: bool = setting(False, help="Account rate and loss only.")
    classify_policy: str = setting(CLASSIFY_DEFAULTS.policy, choices=POLICIES,
                                   help="What is classified when the recognizer cannot keep up with decoding. "
                                        "keyframes-first: keyframes, then every Nth frame, then the rest, as the "
                                        "queue has room; the others are counted unclassified (never lost), and "
                                        "bitrate and loss still count every frame. all: every frame; decoding waits "
                                        "for the recognizer, so a live capture that outruns it drops frames (counted "
                                        "lost): for labelled replays.")
    classify_every: int | None = setting(None, min=1, metavar="N",
                                         help="With keyframes-first: every Nth frame of a stream (seq % N == 0) is "
                                              f"kept before the rest [default: {CLASSIFY_DEFAULTS.every}].")
    classify_queue: int = setting(CLASSIFY_DEFAULTS.queue, min=1, metavar="N",
                                  help="Decoded frames that may wait for the recognizer (also at most 64 MiB of "
                                       "pixels); beyond that the policy chooses.")
    classify_batch: int = setting(CLASSIFY_DEFAULTS.batch, min=1, metavar="N",
                                  help="Frames per recognizer call at most, across streams (frames waiting are "
                                       "classified together; at most --classify-queue).")
    predictions: str | None = setting(None, metavar="FILE.jsonl",
                                      help="Append one JSON line per classified frame to FILE: stream, epoch, seq, "
                                           "codec, QP, model, bytes, capture time, top-5 classes with names and "
                                           "probabilities, and the label when the frame carries one.")
    rd_window: float = setting(DEFAULT_WINDOW_S, "--rd-window", min=0, min_open=True, metavar="SECONDS",
                               help="The live rate-accuracy curve and BD-rate (capture --ladder/--ab) are over the "
                                    "frames of the last SECONDS: per operating point, mean bits and agreement "
                                    "(top-1 accuracy with labels); per pre-transform, BD-rate against none with a "
                                    "bootstrap 95% interval (docs/monitor.md).")
    # the closed loop (server/qp_control.py, issue 14 item 4): ask the capture for the coarsest QP over the floor
    target_agreement: float | None = setting(None, min=0, max=1, metavar="X",
                                             help="Hold this agreement floor (0-1) at the fewest bits: from the "
                                                  "reference pairs (capture --reference-every), ask the capture over "
                                                  "--control for one QP step coarser while the measure is above X + "
                                                  "--target-band, one finer while below X (the capture must allow "
                                                  "it: --allow-remote-qp); docs/monitor.md.")
    target_measure: str = setting(DEFAULT_MEASURE, choices=LOOP_MEASURES,
                                  help="What --target-agreement holds: the mean top-5 overlap or top-1 agreement of "
                                       "the pairs at the current QP over --target-memory.")
    target_band: float = setting(LOOP_DEFAULTS["band"], min=0, max=1, metavar="B",
                                 help="A dead band: no step coarser unless the measure is above X + B (a coarser "
                                      "QP that failed within --target-memory is not tried again before it ages out, unless "
                                      "time-sharing pays for it; docs/monitor.md).")
    target_qp_range: str = setting(f"{LOOP_DEFAULTS['low']}:{LOOP_DEFAULTS['high']}", metavar="MIN:MAX",
                                   help="The QPs the loop may ask for; MIN is also the safe QP it asks for when "
                                        "pairs stop.")
    target_step: int = setting(LOOP_DEFAULTS["step"], min=1, max=51, help="QP step of each change.")
    target_pairs: int = setting(LOOP_DEFAULTS["min_pairs"], min=1, metavar="K",
                                help="Pairs at the current QP before it is judged (after each change).")
    target_seconds: float = setting(LOOP_DEFAULTS["min_seconds"], min=0, metavar="SECONDS",
                                    help="...and at least SECONDS of them: a scene changes slower than a stream "
                                         "that references every frame sends K pairs.")
    target_interval: float = setting(LOOP_DEFAULTS["min_interval_s"], min=0, metavar="SECONDS", help="At most one change per SECONDS.")
    target_memory: float = setting(LOOP_DEFAULTS["memory_s"], min=0, min_open=True, metavar="SECONDS",
                                   help="Judge a QP by all its pairs of the last SECONDS (every stay there): the "
                                        "measure follows the scene, so a short window chases each dip.")
    target_share: bool = setting(LOOP_DEFAULTS["share"], "--target-per-qp", invert=True,
                                 help="Judge each QP alone. By default the loop time-shares the two QPs around the "
                                      "floor, holding the mean of every pair of the last --target-memory at X, "
                                      "which costs fewer bits than the finer one alone.")
    target_silence: float = setting(LOOP_DEFAULTS["silence_s"], min=0, min_open=True, metavar="SECONDS",
                                    help="After SECONDS without a pair, ask for the safe QP (MIN of "
                                         "--target-qp-range).")
    target_engines: str | None = setting(None, metavar="ENGINE,ENGINE",
                                         help="Also compare these pre-transforms (the capture's "
                                              "--allow-remote-engine list) in alternating trials at the QP of the "
                                              "moment, "
                                              "and leave the capture on the one that holds more agreement per bit "
                                              "(needs --target-agreement; each must load here too, to know its "
                                              "model id); docs/monitor.md.")
    engine_trial_every: float = setting(TRIAL_DEFAULTS["every_s"], min=0, metavar="SECONDS",
                                        help="At most one engine trial per SECONDS per stream; doubled (up to 8x) after each trial the "
                                             "other engine does not win.")
    engine_trial_window: float = setting(TRIAL_DEFAULTS["window_s"], min=0, min_open=True, metavar="SECONDS",
                                         help="Each window of a trial (A, B, A, B, ..., A).")
    engine_trial_cycles: int = setting(TRIAL_DEFAULTS["cycles"], min=2, metavar="N",
                                       help="B windows in a trial, each judged against the A windows around it.")
    engine_trial_margin: float = setting(TRIAL_DEFAULTS["margin"], min=0, max=1, metavar="M",
                                         help="The other engine must save this share of bits at equal agreement.")
    engine_trial_early: int = setting(TRIAL_DEFAULTS["early_cycles"], min=0, metavar="N",
                                      help="End a trial after N cycles, back on A, once the other engine is shown "
                                           "worse (0: always run every cycle).")
    report: str | None = setting(None, path="file", help="Write the report as JSON.")
    frames: int | None = setting(None, min=1, help="Stop after N decoded frames.")
    idle_timeout: float | None = setting(None, min=0, min_open=True, help="Stop after S seconds without a message.")
    record: str | None = setting(None, metavar="out.mkv",
                                 help="Record the received stream as it came (no re-encoding) into a .mkv, .mp4 or "
                                      ".mov file (file://PATH too); one file per stream and epoch: PATH, PATH-1, ...; "
                                      "never overwrites.")
    save_frames: str | None = setting(None, metavar="DIR",
                                      help="Save decoded frames as PNG in DIR, named STREAM-EPOCH-SEQ.png.")
    save_every: int | None = setting(None, min=1, metavar="N",
                                     help="With --save-frames: every Nth decoded frame of each stream [default: 1, "
                                          "every frame].")

    def selection(self):
        """The streams this monitor takes (--streams, --shard); one line when they do not go together."""
        from edgepipe.transport.topics import selection

        return selection(self.streams, self.shard)

    def classify_options(self) -> ClassifyOptions:
        return ClassifyOptions(policy=self.classify_policy, every=self.classify_every or CLASSIFY_DEFAULTS.every,
                               queue=self.classify_queue, batch=self.classify_batch)

    def service_options(self, key: str | None, insecure: bool) -> ServiceOptions:
        """With this side's CURVE secret key and --insecure (the command's: the capture has them too)."""
        return ServiceOptions(control=self.control, metrics=self.metrics, dashboard=self.dashboard, record=self.record,
                              save_frames=self.save_frames, save_every=self.save_every or 1,
                              security=SecurityOptions(key=key, server_key=self.server_key, insecure=insecure))

    def loop_settings(self):
        """The closed loop's settings (server/qp_control.py), or None without --target-agreement; one line when
        they do not go together."""
        if self.target_agreement is None:
            return None
        from edgepipe.core.errors import EdgepipeError
        from edgepipe.server.qp_control import LoopSettings
        from edgepipe.transport.control import parse_qp_range

        if not self.control:
            raise EdgepipeError("--target-agreement needs --control ENDPOINT: the QP requests go to the capture's "
                                "control socket")
        if self.no_classify:
            raise EdgepipeError("--target-agreement and --no-classify are exclusive: the loop reads the agreement "
                                "of classified reference pairs")
        try:
            low, high = parse_qp_range(self.target_qp_range, "--target-qp-range")
            return LoopSettings(target=self.target_agreement, measure=self.target_measure, band=self.target_band,
                                low=low, high=high, step=self.target_step, min_pairs=self.target_pairs,
                                min_seconds=self.target_seconds,
                                window=max(LOOP_DEFAULTS["window"], self.target_pairs), memory_s=self.target_memory,
                                min_interval_s=self.target_interval, silence_s=self.target_silence,
                                share=self.target_share)
        except ValueError as exc:
            raise EdgepipeError(str(exc)) from None

    def trial_settings(self):
        """The engine trials' settings (server/engine_trial.py), or None without --target-engines; one line when
        they do not go together or an engine does not load here."""
        if self.target_engines is None:
            return None
        from edgepipe.core.errors import EdgepipeError
        from edgepipe.engines import model_id_of
        from edgepipe.server.engine_trial import TrialSettings

        if self.target_agreement is None:
            raise EdgepipeError("--target-engines needs --target-agreement: the trials judge engines by the loop's "
                                "measure, at the loop's QP")
        specs = tuple(part.strip() for part in self.target_engines.split(","))
        if len(specs) < 2 or not all(specs):
            raise EdgepipeError(f"--target-engines {self.target_engines!r}: give two engines or more separated by "
                                "commas, as the capture's --allow-remote-engine names them, e.g. none,ours")
        try:
            return TrialSettings(specs, tuple(model_id_of(spec) for spec in specs), every_s=self.engine_trial_every,
                                 window_s=self.engine_trial_window, cycles=self.engine_trial_cycles,
                                 margin=self.engine_trial_margin, early_cycles=self.engine_trial_early)
        except ValueError as exc:
            raise EdgepipeError(f"--target-engines: {exc}") from None

    def load_recognizer(self):
        """The batched recognizer (its view's crop before batching), or None with --no-classify; one line, no
        start, when the weights, the Triton URL, tritonclient, the server or the model is wrong."""
        if self.no_classify:
            return None
        if self.recognizer_server:
            from edgepipe.recognition.triton_client import TritonClassifier

            classifier = TritonClassifier(self.recognizer_server, self.recognizer, view=self.recognizer_view)
        else:
            from edgepipe.recognition import Classifier

            classifier = Classifier(self.recognizer, self.weights, view=self.recognizer_view)
        from edgepipe.server.classify import Recognizer

        return Recognizer.from_classifier(classifier)
