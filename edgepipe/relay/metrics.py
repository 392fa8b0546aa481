"""Prometheus metrics of the relay, read at scrape time from the tap's counts (relay/tap.py), the
connection watcher and the allow-lists: the same numbers as its JSON report.

    edgepipe_relay_messages_total{direction, stream, kind}   to_monitors: frame | end_of_stream | reference, per stream;
                                                             to_cameras: subscribe | unsubscribe (stream: the
                                                             one a whole-stream topic names, else "")
    edgepipe_relay_bytes_total{direction, stream}            every part of those messages
    edgepipe_relay_unrecognised_total                        messages from cameras that are no edgepipe header
    edgepipe_relay_connections{side}                         cameras / monitors connected now
    edgepipe_relay_topics_live, edgepipe_relay_subscription_floods_total, edgepipe_relay_resets_total
    edgepipe_relay_auth_refused_total{side, cause}, edgepipe_relay_auth_accepted_total{side}

Frames/s into the relay per stream: rate(edgepipe_relay_messages_total{direction="to_monitors",kind="frame"}[1m]).
What each monitor got is in that monitor's own metrics (a frame goes to every monitor that subscribed to it).
"""
from __future__ import annotations

from typing import Iterator

from edgepipe.relay.tap import TO_CAMERAS, TO_MONITORS


class RelayCollector:
    def __init__(self, service):
        self.service = service

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from edgepipe.relay.service import CAMERAS, MONITORS

        svc = self.service
        relay, zap, hs = svc.relay, svc.zap, svc.handshakes
        if relay is None:  # closed
            return
        counts = relay.tap.snapshot()
        p = "edgepipe_relay_"
        messages = CounterMetricFamily(p + "messages", "Messages forwarded, by direction, stream and kind.",
                                       labels=["direction", "stream", "kind"])
        nbytes = CounterMetricFamily(p + "bytes", "Bytes forwarded (every part), by direction and stream.",
                                     labels=["direction", "stream"])
        for stream in sorted(set(counts["frames"]) | set(counts["ends"])):
            messages.add_metric([TO_MONITORS, stream, "frame"], counts["frames"].get(stream, 0))
            messages.add_metric([TO_MONITORS, stream, "end_of_stream"], counts["ends"].get(stream, 0))
            if stream in counts["references"]:  # only for streams that send them (capture --reference-every)
                messages.add_metric([TO_MONITORS, stream, "reference"], counts["references"][stream])
            nbytes.add_metric([TO_MONITORS, stream], counts["bytes"].get(stream, 0))
        for kind in ("subscribe", "unsubscribe"):
            messages.add_metric([TO_CAMERAS, "", kind], counts["subscriptions"].get(kind, 0))
        nbytes.add_metric([TO_CAMERAS, ""], counts["subscription_bytes"])
        yield messages
        yield nbytes
        named = CounterMetricFamily(p + "stream_subscriptions", "Subscriptions that name one stream (monitor "
                                                               "--streams), first ones only.", labels=["stream"])
        for stream, n in sorted(counts["subscriptions_by_stream"].items()):
            named.add_metric([stream], n)
        yield named
        yield CounterMetricFamily(p + "unrecognised", "Messages from cameras that are no edgepipe header (forwarded; "
                                                      "the monitors reject and count them).",
                                  value=counts["unrecognised"])
        conns = GaugeMetricFamily(p + "connections", "Connections open now, by side.", labels=["side"])
        accepted = CounterMetricFamily(p + "connections_accepted", "Connections accepted, by side.", labels=["side"])
        for side, role in (("cameras", CAMERAS), ("monitors", MONITORS)):
            conns.add_metric([side], hs.connections[role])
            accepted.add_metric([side], hs.accepted[role])
        yield conns
        yield accepted
        yield GaugeMetricFamily(p + "topics_live", "Distinct subscription topics live (capped: a flood resets the "
                                                   "monitors' side).", value=counts["topics_live"])
        yield CounterMetricFamily(p + "subscription_floods", "Times the topics overflowed their cap.",
                                  value=counts["floods"])
        yield CounterMetricFamily(p + "resets", "Times the monitors' side was reset (closed and bound again).",
                                  value=relay.resets)
        yield GaugeMetricFamily(p + "up", "1 while the proxy runs.", value=int(relay.alive()))
        refused = CounterMetricFamily(p + "auth_refused", "Peers refused (allow-list, or a failed CURVE handshake), "
                                                          "by side and cause.", labels=["side", "cause"])
        for (domain, cause), n in sorted(zap.denied_by_domain.items()):
            refused.add_metric([domain.rsplit("-", 1)[-1], cause], n)
        for cause, n in sorted(hs.failures.items()):
            refused.add_metric(["handshake", cause], n)
        yield refused
        ok = CounterMetricFamily(p + "auth_accepted", "Peers the allow-list let in, by side.", labels=["side"])
        for domain, n in sorted(zap.accepted_by_domain.items()):
            ok.add_metric([domain.rsplit("-", 1)[-1]], n)
        yield ok
