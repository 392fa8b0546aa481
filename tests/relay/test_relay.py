"""The relay on loopback with real captures (real images, real HEVC) and real monitors: sharded and named
subscriptions, captures that dial out and wait for a subscriber through it, exact accounting per stream
at every hop, its metrics over HTTP, CURVE on both sides with allow-lists."""
from __future__ import annotations

import re
import time
import urllib.request

import pytest

from edgepipe.edge.capture import CaptureSettings
from edgepipe.edge.service import CaptureService
from edgepipe.ops.service import SecurityOptions, ServiceOptions
from edgepipe.relay.service import RelayService
from edgepipe.server.service import MonitorService
from edgepipe.transport.protocol import stream_bucket
from edgepipe.transport.security import write_keypair
from edgepipe.transport.sockets import free_tcp_endpoint
from edgepipe.transport.topics import StreamSelection

from field_helpers import Running, wait_for

SIZE = (192, 128)


def names_in_both_shards(n: int = 3) -> list[str]:
    """n stream ids, shard 0/2 and 1/2 each getting at least one (sharding must be seen to split)."""
    candidates = [f"cam-{c}" for c in "abcdefghijklmnop"]
    even = [c for c in candidates if stream_bucket(c) % 2 == 0]
    odd = [c for c in candidates if stream_bucket(c) % 2 == 1]
    return sorted(even[:2] + odd[:n - 2])


def folder_capture(folder, publish: str, stream_id: str, options: ServiceOptions | None = None,
                   wait_s: float = 30.0) -> CaptureService:
    return CaptureService(CaptureSettings(source=f"folder:{folder}", publish=publish, stream_id=stream_id, gop=4,
                                          size=SIZE, wait_subscriber_s=wait_s), options)


def scrape(port: int) -> dict[tuple[str, ...], float]:
    """The relay's per-stream message counters: (direction, stream, kind) -> value."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for m in re.finditer(r'^edgepipe_relay_messages_total\{direction="(\w+)",kind="(\w+)",stream="([^"]*)"\} (\S+)$',
                         body, re.M):
        out[(m.group(1), m.group(3), m.group(2))] = float(m.group(4))
    return out


def per_stream(report: dict) -> dict[str, dict]:
    return {s["stream"]: s for s in report["streams"]}


def test_three_captures_through_the_relay_to_sharded_and_named_monitors(small_val_folder):
    names = names_in_both_shards()
    relay = RelayService(free_tcp_endpoint(), free_tcp_endpoint(), metrics="127.0.0.1:0")
    relay_run = Running(relay.run)
    cams, mons = relay.bound
    selections = {"0/2": StreamSelection(shard=(0, 2)), "1/2": StreamSelection(shard=(1, 2)),
                  "named": StreamSelection(streams=(names[0], names[2]))}
    monitors = {k: MonitorService(mons, None, selection=s) for k, s in selections.items()}
    runs = {k: Running(m.run) for k, m in monitors.items()}
    captures, caps = [], []
    try:
        # every monitor's subscriptions are at the relay before a camera connects: it gets them all at once
        # (each in wire versions 4 and 5: a capture of the release before sends version 4)
        assert wait_for(lambda: relay.report()["subscriptions"]["topics_live"] == 2 * (128 + 128 + 2), 15)
        captures = [folder_capture(small_val_folder, "pub+connect:" + cams, n) for n in names]
        caps = [Running(c.run) for c in captures]
        for c in caps:
            c.thread.join(90)
        stats = {n: c.result for n, c in zip(names, caps)}
        assert all(s is not None for s in stats.values()), [c.error for c in caps]
        expected_ends = {k: sum(1 for n in names if s.takes(n)) for k, s in selections.items()}
        assert wait_for(lambda: all(m.monitor.end_of_stream["matched"] == expected_ends[k]
                                    for k, m in monitors.items()), 30)
        metrics = scrape(relay.metrics.port)
        relay_report = relay.report()
    finally:
        for r in runs.values():
            r.stop()
        relay_run.stop()
        for s in (*captures, *monitors.values(), relay):
            s.close()
    for st in stats.values():  # waited for a subscriber through the relay: nothing went to nobody
        assert st.frames_sent == 12 and st.frames_unsubscribed == 0 and st.end_of_stream == "sent"
    reports = {k: m.report() for k, m in monitors.items()}
    got = {k: set(per_stream(r)) for k, r in reports.items()}
    assert got["0/2"] and got["1/2"] and not got["0/2"] & got["1/2"]  # disjoint, both used
    assert got["0/2"] | got["1/2"] == set(names)  # and together every stream
    assert got["named"] == {names[0], names[2]}  # exactly those
    for k, rep in reports.items():
        assert not rep["rejects"] and rep["takes"] == selections[k].as_dict()
        for name, s in per_stream(rep).items():  # sent = received + lost, at the monitor, per stream
            assert s["received"] + s["lost"] == stats[name].frames_sent and s.get("ended"), (k, s)
        assert rep["decoded"] == sum(stats[n].frames_sent for n in got[k])
    for name, st in stats.items():  # the relay forwarded each frame once, and each end of stream
        assert metrics[("to_monitors", name, "frame")] == st.frames_sent
        assert metrics[("to_monitors", name, "end_of_stream")] == 1
        assert per_stream(relay_report)[name]["frames"] == st.frames_sent
    # each topic's first subscription, once, in wire versions 4 and 5
    assert metrics[("to_cameras", "", "subscribe")] == 2 * 258
    assert relay_report["connections"]["cameras_accepted"] == 3
    assert relay_report["connections"]["monitors_accepted"] == 3


def test_curve_on_both_sides_with_allow_lists(tmp_path, small_val_folder):
    """The relay is the CURVE server on both sides: an allowed camera's frames reach an allowed monitor; a
    camera whose key is not in allow-cameras is refused (its frames go to nobody, counted there), and so
    is a monitor whose key is not in allow-monitors (nothing reaches it)."""
    keys = tmp_path / "keys"
    for name in ("relay", "door", "intruder", "office", "stranger"):
        write_keypair(keys, name)
    k = lambda name, secret=False: str(keys / f"{name}.key{'_secret' if secret else ''}")  # noqa: E731
    relay = RelayService(free_tcp_endpoint(), free_tcp_endpoint(), key=k("relay", True),
                         allow_cameras=(k("door"),), allow_monitors=(k("office"),))
    relay_run = Running(relay.run)
    cams, mons = relay.bound
    watcher = MonitorService(mons, None, ServiceOptions(security=SecurityOptions(key=k("office", True),
                                                                                  server_key=k("relay"))))
    outsider = MonitorService(mons, None, ServiceOptions(security=SecurityOptions(key=k("stranger", True),
                                                                                   server_key=k("relay"))))
    runs = [Running(watcher.run), Running(outsider.run)]

    def camera(name, wait_s):
        return folder_capture(small_val_folder, "pub+connect:" + cams, name,
                              ServiceOptions(security=SecurityOptions(key=k(name, True), allow=(k("relay"),))), wait_s)

    captures = []
    try:
        assert wait_for(lambda: relay.report()["subscriptions"]["topics_live"] == 1, 15)  # office's b""
        captures = [camera("door", 30), camera("intruder", 2)]
        done = [Running(c.run) for c in captures]
        for d in done:
            d.thread.join(90)
        door, intruder = (d.result for d in done)
        assert wait_for(lambda: watcher.monitor.end_of_stream["matched"] == 1, 20)
        time.sleep(0.5)
        report = relay.report()
    finally:
        for r in runs:
            r.stop()
        relay_run.stop()
        for s in (*captures, watcher, outsider, relay):
            s.close()
    assert door.frames_sent == 12 and door.frames_unsubscribed == 0
    assert intruder.frames_sent == 12 and intruder.frames_unsubscribed == 12  # refused: its frames reached nobody
    seen = watcher.report()
    assert set(per_stream(seen)) == {"door"} and seen["decoded"] == 12 and seen["lost"] == 0
    assert outsider.report()["messages"] == 0
    assert report["refused"].get("cameras:unknown_key", 0) >= 1 and report["refused"].get("monitors:unknown_key", 0) >= 1
    assert [s["stream"] for s in report["streams"]] == ["door"]
    assert report["security"] == "CURVE"


def test_a_capture_key_file_that_allows_more_than_the_relay_is_one_line(tmp_path):
    from edgepipe.core.errors import EdgepipeError

    keys = tmp_path / "keys"
    for name in ("cam", "relay", "monitor"):
        write_keypair(keys, name)
    with pytest.raises(EdgepipeError, match="exactly one key, the relay's public key"):
        CaptureService(CaptureSettings(source="x", publish="pub+connect:tcp://127.0.0.1:1", stream_id="cam"),
                       ServiceOptions(security=SecurityOptions(key=str(keys / "cam.key_secret"), allow=(str(keys),))),
                       source=object(), engine=None)
