"""Prometheus metrics for capture and monitor (prometheus-client).

The collectors read the counters the loop already keeps (CaptureStats, Monitor, LiveSource, the
back channel, the allow-list) at scrape time, so the hot path does no extra bookkeeping and the
metrics always agree with the JSON reports. Each process gets its own CollectorRegistry (not the
global default), so tests and embedded uses do not collide.

Rates are counters: frames/s per stage is rate(edgepipe_capture_frames_total[1m]); mean encode or
inference ms is rate(edgepipe_capture_stage_seconds_sum[1m]) / rate(..._count[1m]) * 1000, and the
same for bits per frame and end-to-end latency.

kbit/s on the stream's own clock (what the reports and the table call kbit_s) is bytes over stream
seconds, both counters: 8 * increase(edgepipe_capture_bytes_sent_total[5m]) /
increase(edgepipe_capture_stream_seconds_total[5m]) / 1000, and on the monitor the same with
edgepipe_monitor_stream_bytes_total / edgepipe_monitor_stream_seconds_total (per operating point).
8 * rate(bytes) / 1000 is per second of wall clock instead: how fast this machine processed them,
which for a replayed file or folder is not the stream's rate.
"""
from __future__ import annotations

import logging
from typing import Iterator

from edgepipe.core.errors import EdgepipeError
from edgepipe.ops.bounded_http import bounded_server

log = logging.getLogger(__name__)


def parse_listen(spec: str, what: str = "metrics") -> tuple[str, int]:
    """'9101' -> ('127.0.0.1', 9101); ':9101' -> ('0.0.0.0', 9101); 'HOST:PORT' as given. `what` names the
    address in the error (metrics, dashboard)."""
    host, _, port = spec.rpartition(":")
    if not _:
        host = "127.0.0.1"
    elif not host:
        host = "0.0.0.0"
    try:
        number = int(port)
    except ValueError:
        raise EdgepipeError(f"{what} address must be PORT, :PORT or HOST:PORT, got {spec!r}") from None
    if not 0 <= number <= 65535:
        raise EdgepipeError(f"{what} port {number} is out of range")
    return host.strip("[]"), number


class MetricsServer:
    """An HTTP /metrics endpoint for one registry, stopped with close().

    Bounded: at most `max_connections` requests are served at once (one thread each; a connection
    beyond that is closed at once and counted in `refused`), and a client that sends nothing, or
    reads nothing, is dropped after `timeout_s` (300 half-open connections made 300 threads)."""

    def __init__(self, registry, listen: str, max_connections: int = 8, timeout_s: float = 5.0):
        import threading
        from socketserver import ThreadingMixIn
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

        from prometheus_client import make_wsgi_app

        host, port = parse_listen(listen)
        self.refused = 0
        Server = bounded_server(type("Server", (ThreadingMixIn, WSGIServer), {}), host, max_connections, self,
                                "metrics", backlog=128)

        class QuietHandler(WSGIRequestHandler):
            timeout = timeout_s  # socket timeout for every read and write of a request

            def log_message(self, *args) -> None:  # one line per scrape would flood the journal
                pass

        # our own small server (public prometheus_client API only), so close() works on every version
        try:
            self._server = make_server(host, port, make_wsgi_app(registry), Server, QuietHandler)
        except OSError as exc:
            raise EdgepipeError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="edgepipe-metrics", daemon=True)
        self._thread.start()
        self.port = self._server.server_address[1]
        self.host = host
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _families():
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

    return CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily


class CaptureCollector:
    """Metrics of one CaptureLoop; `control`, `zap` and `handshakes` are optional."""

    def __init__(self, loop, control=None, zap=None, handshakes=None):
        self.loop, self.control, self.zap, self.handshakes = loop, control, zap, handshakes

    def collect(self) -> Iterator:
        Counter_, Gauge, Summary = _families()
        loop, st, s = self.loop, self.loop.stats, self.loop.settings
        p = "edgepipe_capture_"
        with st._lock:  # one consistent snapshot
            stages = {name: (t.count, t.busy_s) for name, t in st.stages.items()}
            drops = dict(st.drops)
            sent, nbytes, keyframes, requests = st.frames_sent, st.bytes_sent, st.keyframes, st.keyframe_requests
            stream_s = st.stream_s
        info = Gauge(p + "info", "What this capture runs (value 1).",
                     labels=["stream", "source", "model", "codec", "encoder"])
        info.add_metric([s.stream_id, loop.source.name, loop.engine.model_id, s.codec, s.encoder], 1)
        yield info
        yield Gauge(p + "epoch", "Stream epoch of this run (changes when capture restarts).", value=loop.epoch)
        qp = -1 if s.crf is not None or s.qp is None else getattr(loop, "qp_now", s.qp)  # a monitor may move it
        point = getattr(loop, "operating_point", None)  # a ladder's current point (capture --ladder)
        qp = point.quality if point is not None else qp
        yield Gauge(p + "qp", "HEVC QP (JPEG quality / JPEG 2000 rate for those codecs; -1 under CRF).", value=qp)
        if getattr(loop, "remote_qp", None) is not None:
            yield Counter_(p + "qp_requests", "QP requests obeyed (capture --allow-remote-qp; refusals are in "
                                              "control_rejects).", value=st.qp_requests)
            yield Counter_(p + "qp_changes", "QP changes applied at a GOP boundary (monitor --target-agreement).",
                           value=st.qp_changes)
        if getattr(loop, "remote_engines", None) is not None:
            yield Counter_(p + "engine_requests", "Pre-transform requests obeyed (capture --allow-remote-engine; "
                                                  "refusals are in control_rejects).", value=st.engine_requests)
            yield Counter_(p + "engine_changes", "Pre-transform changes applied at a GOP boundary.",
                           value=st.engine_changes)
        if getattr(loop, "ladder", None) is not None:
            yield Counter_(p + "ladder_switches", "Switches of operating point (capture --ladder/--ab), one per GOP.",
                           value=st.ladder_switches)
        frames = Counter_(p + "frames", "Frames through each stage (rate() gives frames/s).", labels=["stage"])
        secs = Summary(p + "stage_seconds", "Busy time per frame in each stage (encode, inference ms).",
                       labels=["stage"])
        for name, (count, busy) in sorted(stages.items()):
            frames.add_metric([name], count)
            secs.add_metric([name], count_value=count, sum_value=busy)
        yield frames
        yield secs
        yield Counter_(p + "frames_sent", "Encoded frames handed to ZeroMQ.", value=sent)
        yield Counter_(p + "bytes_sent", "Encoded payload bytes sent.", value=nbytes)
        yield Counter_(p + "stream_seconds", "Stream-clock seconds the sent frames stand for (video timestamps, --fps "
                                             "or the camera clock): kbit/s = 8 * bytes_sent / this / 1000.",
                       value=stream_s)
        yield Counter_(p + "keyframes_sent", "Keyframes (IDR) sent.", value=keyframes)
        yield Summary(p + "bits_per_frame", "Encoded bits per sent frame.", count_value=sent, sum_value=nbytes * 8)
        dropped = Counter_(p + "drops", "Frames dropped, by cause and where it happened.", labels=["cause"])
        for cause, n in sorted(drops.items()):
            dropped.add_metric([cause], n)
        yield dropped
        depth = Gauge(p + "queue_depth", "Frames waiting in each inter-stage queue.", labels=["queue"])
        for name, q in loop.queues.items():
            depth.add_metric([name], q.qsize())
        yield depth
        yield Gauge(p + "queue_capacity", "Capacity of each inter-stage queue.", value=s.queue_size)
        yield Counter_(p + "keyframe_requests", "Keyframe requests received (back channel).", value=requests)
        yield Counter_(p + "forced_keyframes", "IDR frames forced by requests or after a network drop.",
                       value=loop.forced_keyframes)
        pub = loop.publisher
        yield Counter_(p + "subscriptions", "Subscriptions seen on the data socket (monitors joining).",
                       value=pub.subscribers_seen)
        yield Gauge(p + "topics_live", "Distinct subscription topics held now (capped: max_topics).",
                    value=len(pub.topics))
        yield Counter_(p + "subscription_floods", "Times too many topics were subscribed: the sender banned, "
                                                 "the socket reopened.", value=pub.subscription_floods)
        yield Counter_(p + "bad_subscriptions", "Messages from subscribers that were no (un)subscription.",
                       value=pub.bad_subscriptions)
        yield Counter_(p + "frames_unsubscribed", "Frames sent while no monitor was subscribed (nobody got them).",
                       value=st.frames_unsubscribed)
        src = loop.source
        yield Gauge(p + "source_up", "1 while the source delivers, 0 while it is being reopened.",
                    value=int(getattr(src, "connected", True)))
        yield Counter_(p + "source_failures", "Times a live source dropped.", value=getattr(src, "failures", 0))
        yield Counter_(p + "source_reconnects", "Successful reopens of a live source.",
                       value=getattr(src, "reconnects", 0))
        yield Counter_(p + "source_open_attempts", "Reopen attempts of a live source.",
                       value=getattr(src, "open_attempts", 0))
        yield Gauge(p + "source_retry_seconds", "Back-off before the next reopen attempt (0 when up).",
                    value=getattr(src, "retry_in_s", 0.0))
        if self.control is not None:
            bad = Counter_(p + "control_rejects", "Ignored back-channel messages, by cause.", labels=["cause"])
            for cause, n in sorted(self.control.rejects.items()):
                bad.add_metric([cause], n)
            yield bad
        yield from _auth_metrics(p, self.zap, self.handshakes)


def _auth_metrics(prefix: str, zap, handshakes) -> Iterator:
    Counter_, _, _ = _families()
    refused = Counter_(prefix + "auth_refused", "Peers refused (allow-list or failed CURVE handshake), by cause.",
                       labels=["cause"])
    for source in (zap.denied if zap else {}, handshakes.failures if handshakes else {}):
        for cause, n in sorted(dict(source).items()):
            refused.add_metric([cause], n)
    yield refused
    if zap is not None:
        yield Counter_(prefix + "auth_accepted", "Peers accepted by the allow-list (or, in plain text, not banned).",
                       value=zap.accepted)
        yield Counter_(prefix + "bans", "Peers banned for a while (a subscription flood).", value=zap.bans)


def _live_rd_metrics(live: dict, Gauge, p: str) -> Iterator:
    """The live BD-rate of each pre-transform against the anchor (server/live_rd.py), with a ladder only."""
    entries = [(sid, e) for sid, stream in sorted(live.items()) for e in stream["bd"]]
    if not entries:
        return
    labels = ["stream", "model", "anchor", "codec", "measure"]
    rate = Gauge(p + "live_bd_rate_percent", "Live BD-rate of a pre-transform against the anchor (none) over "
                                              "--rd-window, cubic fit: negative = fewer bits at equal quality; "
                                              "bound estimate, or lo and hi of its bootstrap 95% interval.",
                 labels=[*labels, "bound"])
    points = Gauge(p + "live_bd_points", "Operating points with data on both curves (a BD-rate needs 4).",
                   labels=labels)
    for sid, e in entries:
        key = [sid, e["model"], e["anchor"], e["codec"], e["measure"]]
        points.add_metric(key, e["points"])
        if e["bd_rate"] is not None:
            rate.add_metric([*key, "estimate"], e["bd_rate"])
            if e.get("ci95"):
                rate.add_metric([*key, "lo"], e["ci95"][0])
                rate.add_metric([*key, "hi"], e["ci95"][1])
    yield rate
    yield points


class MonitorCollector:
    """Metrics of one Monitor; `control` (the keyframe back channel) and `handshakes` optional."""

    def __init__(self, monitor, control=None, handshakes=None):
        self.monitor, self.control, self.handshakes = monitor, control, handshakes

    def collect(self) -> Iterator:
        Counter_, Gauge, Summary = _families()
        m = self.monitor
        p = "edgepipe_monitor_"
        with m._lock:
            messages, decoded, rejects = m.messages, m.decoded, dict(m.rejects)
            lost_by_stream: dict[str, int] = {}
            received_by_stream: dict[str, int] = {}
            epochs: dict[str, int] = {}
            for (sid, epoch), state in m.streams.items():
                lost_by_stream[sid] = lost_by_stream.get(sid, 0) + state.lost
                received_by_stream[sid] = received_by_stream.get(sid, 0) + state.received
                epochs[sid] = epoch  # insertion order: the latest epoch wins
            rows = [(key, acc.frames, acc.bytes, acc.labelled, acc.correct, acc.latency_sum_s, acc.stream_bytes,
                     acc.stream_s, acc.classified, acc.unclassified) for key, acc in m.rows.items()]
            timings = {k: tuple(v) for k, v in m.timings.items()}
            expired = dict(m.expired)
            classified, unclassified = m.classified, dict(m.unclassified_by_cause)
            references = dict(m.references)
            unpaired, pairs, pending_pairs = dict(m.pairs.unpaired), m.pairs.pairs, m.pairs.pending
            agreements = [(key, acc.references, acc.reference_bytes, acc.references_lost, acc.agreement)
                          for key, acc in m.rows.items() if acc.references or acc.references_lost]
        memory = m.memory()
        yield Counter_(p + "messages", "Messages received on the data socket.", value=messages)
        yield Counter_(p + "frames_decoded", "Frames decoded and shown.", value=decoded)
        bad = Counter_(p + "rejects", "Messages rejected, by cause.", labels=["cause"])
        for cause, n in sorted(rejects.items()):
            bad.add_metric([cause], n)
        yield bad
        lost = Counter_(p + "lost_frames", "Frames missing from the sequence (all epochs).", labels=["stream"])
        received = Counter_(p + "received_frames", "Well-formed frames received (all epochs).", labels=["stream"])
        epoch = Gauge(p + "epoch", "Latest epoch seen for each stream.", labels=["stream"])
        for sid in sorted(lost_by_stream):
            lost.add_metric([sid], lost_by_stream[sid])
            received.add_metric([sid], received_by_stream[sid])
            epoch.add_metric([sid], epochs[sid])
        yield lost
        yield received
        yield epoch
        labels = ["stream", "model", "qp", "codec"]
        frames = Counter_(p + "frames", "Decoded frames per operating point.", labels=labels)
        nbytes = Counter_(p + "bytes", "Payload bytes of decoded frames per operating point.", labels=labels)
        bits = Summary(p + "bits_per_frame", "Encoded bits per decoded frame.", labels=labels)
        stream_bytes = Counter_(p + "stream_bytes", "Payload bytes of decoded frames that carry a stream clock "
                                                   "(wire version 3).", labels=labels)
        stream_s = Counter_(p + "stream_seconds", "Stream-clock seconds those frames stand for: kbit/s = "
                                                  "8 * stream_bytes / this / 1000.", labels=labels)
        latency = Summary(p + "latency_seconds", "End-to-end latency, capture to decoded.", labels=labels)
        top1 = Gauge(p + "top1_ratio", "Top-1 accuracy against the labels carried in the stream.", labels=labels)
        labelled = Counter_(p + "labelled_frames", "Classified frames that carried a label (top-1 is over these).",
                            labels=labels)
        row_classified = Counter_(p + "classified_frames", "Decoded frames the recognizer classified, per operating "
                                                          "point.", labels=labels)
        row_unclassified = Counter_(p + "unclassified_frames", "Decoded frames not classified (shed under load, "
                                                              "recognizer away, at stop), per operating point.",
                                    labels=labels)
        for (sid, model, qp, codec), n, b, lab, correct, lat, sb, ss, cls, uncls in sorted(
                rows, key=lambda r: tuple(map(str, r[0]))):
            key = [sid, model, str(qp), codec]
            frames.add_metric(key, n)
            nbytes.add_metric(key, b)
            stream_bytes.add_metric(key, sb)
            stream_s.add_metric(key, ss)
            bits.add_metric(key, count_value=n, sum_value=b * 8)
            latency.add_metric(key, count_value=n, sum_value=lat)
            labelled.add_metric(key, lab)
            row_classified.add_metric(key, cls)
            row_unclassified.add_metric(key, uncls)
            if lab:
                top1.add_metric(key, correct / lab)
        yield from (frames, nbytes, stream_bytes, stream_s, bits, latency, top1, labelled, row_classified,
                    row_unclassified)
        if m.recognizer is not None:
            yield from self._classify_metrics(classified, unclassified)
        if references:
            yield from _reference_metrics(references, unpaired, pairs, pending_pairs, agreements)
        yield from _live_rd_metrics(m.live_rd.summary(), Gauge, p)  # the BD figures cached for a few seconds
        held = Gauge(p + "held", "What the bounded per-sender structures hold now (docs/guarantees.md).",
                     labels=["structure"])
        for name, value in sorted(memory.items()):
            held.add_metric([name], value)
        yield held
        folded = Counter_(p + "expired", "Entries folded to stay within a bound (counts kept, memory freed).",
                          labels=["what"])
        for name, value in sorted(expired.items()):
            folded.add_metric([name], value)
        yield folded
        secs = Summary(p + "stage_seconds", "Time per frame in decode and classify (inference ms).", labels=["stage"])
        for stage, (count, total) in sorted(timings.items()):
            secs.add_metric([stage], count_value=count, sum_value=total)
        yield secs
        sub = m.subscriber
        if sub is not None:
            yield Gauge(p + "connected", "Connections to captures up now.", value=sub.connected)
            yield Gauge(p + "transport_healthy", "0 while a connection the transport dropped is not repaired.",
                        value=int(sub.healthy()))
            yield Counter_(p + "transport_drops", "Connections the transport dropped without retrying "
                                                 "(a message over the size limit, a protocol error).", value=sub.drops)
            yield Counter_(p + "transport_repairs", "Such connections made again by the monitor.", value=sub.repairs)
            yield Counter_(p + "disconnects", "Connections lost, for any reason.", value=sub.disconnects)
        sinks = m.sinks.report() if m.sinks is not None else None
        if sinks is not None:
            written = Counter_(p + "sink_frames", "Frames written by --record / --save-frames.", labels=["sink"])
            lost = Counter_(p + "sink_dropped", "Frames a sink did not write: its queue was full (a slow disk), "
                                                "or it waited for a keyframe after one.", labels=["sink"])
            for name, key in (("record", "record"), ("save_frames", "save")):
                if name in sinks:
                    written.add_metric([key], sinks[name]["frames"])
                    lost.add_metric([key], sinks[name]["dropped"] + sinks[name].get("skipped", 0))
            yield written
            yield lost
            errors = Counter_(p + "sink_errors", "Sink failures (disk full, gone, no permission), by sink and cause.",
                              labels=["cause"])
            for cause, n in sorted(sinks["errors"].items()):
                errors.add_metric([cause], n)
            yield errors
        if self.control is not None:
            yield Counter_(p + "keyframe_requests", "Keyframe requests sent to the capture after a loss.",
                           value=self.control.sent)
            yield Counter_(p + "keyframe_requests_unsent", "Keyframe requests that could not be sent.",
                           value=self.control.unsent)
            yield Counter_(p + "qp_requests", "QP requests sent to the capture by the closed loop "
                                              "(--target-agreement).", value=self.control.requests_sent["qp"])
            yield Counter_(p + "qp_requests_unsent", "QP requests that could not be sent (retried while wanted).",
                           value=self.control.requests_unsent["qp"])
        yield from _auth_metrics(p, None, self.handshakes)


    def _classify_metrics(self, classified: int, unclassified: dict) -> Iterator:
        """The recognizer beside the decoding loop: frames classified or not, its queue and its batches."""
        Counter_, Gauge, Summary = _families()
        m, p = self.monitor, "edgepipe_monitor_"
        yield Counter_(p + "frames_classified", "Decoded frames the recognizer classified.", value=classified)
        not_classified = Counter_(p + "frames_unclassified", "Decoded frames not classified, by cause "
                                                             "(never counted as lost).", labels=["cause"])
        for cause, n in unclassified.items():  # every cause, from 0 (the monitor lists them all)
            not_classified.add_metric([cause], n)
        yield not_classified
        yield Gauge(p + "classify_queue_depth", "Decoded frames waiting for the recognizer, the batch being "
                                                "classified included.", value=m.pending_classifications())
        yield Gauge(p + "classify_queue_capacity", "Frames the classify queue holds at most (--classify-queue).",
                    value=m.classifying.queue)
        r = m.recognizer
        yield Summary(p + "classify_batch_frames", "Frames per recognizer call (mean batch = sum / count).",
                      count_value=r.calls, sum_value=r.frames)


def _reference_metrics(references: dict, unpaired: dict, pairs: int, pending: int, rows: list) -> Iterator:
    """Reference messages (issue 14 item 1), counted apart from the stream, and the agreement of their pairs per
    operating point (the coded frame's row)."""
    Counter_, Gauge, _ = _families()
    p = "edgepipe_monitor_reference_"
    outcome = Counter_(p + "messages", "Reference messages received (never stream frames), by outcome.",
                       labels=["outcome"])
    for name in ("received", "decoded", "classified", "unclassified", "lost", "without_frame", "undecodable",
                 "unprocessed_at_stop"):
        outcome.add_metric([name], references.get(name, 0))
    yield outcome
    yield Counter_(p + "bytes", "Payload bytes of reference messages (never in the stream's bytes).",
                   value=references.get("bytes", 0))
    yield Counter_(p + "pairs", "Reference pairs measured (both halves classified).", value=pairs)
    yield Gauge(p + "pairs_pending", "Classified halves waiting for their other half.", value=pending)
    missing = Counter_(p + "unpaired", "Pairs never measured, by cause.", labels=["cause"])
    for cause, n in sorted(unpaired.items()):
        missing.add_metric([cause], n)
    yield missing
    labels = ["stream", "model", "qp", "codec"]
    per_row = Counter_(p + "row_bytes", "Reference bytes per operating point.", labels=labels)
    gauges = {name: Gauge(p + name, f"Mean {what} over the row's pairs.", labels=labels) for name, what in (
        ("top1_agreement", "top-1 agreement of coded frame and reference"),
        ("top5_overlap", "top-5 overlap (shared classes / 5)"),
        ("p_reference", "probability the coded frame gives the reference's top-1 class"),
        ("kl_divergence", "KL(reference || coded) in nats"))}
    measure = {"top1_agreement": "top1_equal", "top5_overlap": "top5_overlap", "p_reference": "p_reference",
               "kl_divergence": "kl"}
    for (sid, model, qp, codec), _, nbytes, _, agreement in sorted(rows, key=lambda r: tuple(map(str, r[0]))):
        key = [sid, model, str(qp), codec]
        per_row.add_metric(key, nbytes)
        for name, gauge in gauges.items():
            mean = agreement.mean(measure[name]) if agreement is not None else None
            if mean is not None:
                gauge.add_metric(key, mean)
    yield per_row
    yield from gauges.values()


def registry_for(*collectors):
    """A private registry holding the given collectors (plus nothing global)."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    for c in collectors:
        registry.register(c)
    return registry
