"""Hostile-peer soak (issue 11): a real capture and a real monitor process, and an attacker
between them, for --minutes M.

    nice -n 10 python bench/hostile_soak.py --minutes 5 --out bench/results/hostile_soak.json
    python bench/hostile_soak.py --minutes 0.5 --out /tmp/soak.json      # smoke run

Processes, all on loopback, plain text:

    edgepipe capture --source car-detection.mp4 --loop --realtime (HEVC)  --publish A --control C
        |  (SUB, from 127.0.0.1)                         ^ subscription floods from 127.0.0.2, .3, ...
    this process: relay + attacker                       | (one flooder process per flood)
        |  (XPUB on B: the socket the monitor subscribes to, as Feeder in tests/system/test_hostile.py)
    edgepipe monitor --connect B --control C --report r.json

The monitor's data socket connects to one endpoint, so the attacker is the socket it subscribes
to (as in test_hostile.py's Session): every real frame the capture publishes is forwarded on that
connection, in order, and hostile messages are interleaved between real frames. The relay never
drops: it forwards only while the monitor is subscribed (NODROP, waits) and counts what it got
and what it forwarded, so a real frame missing at the monitor is the capture's or the monitor's.

Every attack of issue 11, interleaved for the whole run: forged seq jumps (2^64-1), NaN / inf /
implausible capture times (and media times and durations, wire version 3), forged epochs of the real stream id (P-frames and garbage keyframes),
invented stream ids (never decodable), invented model ids on a decodable stream (the row cap),
forged end-of-stream messages (live epoch: proven false by the next frame; backwards; unknown
epoch; unknown stream), replays, a message over the monitor's MAXMSGSIZE every --oversize-every s
(the monitor must connect again), the malformed kinds of tests/system/test_fuzz.py (its Fuzzer),
a subscription flood against the capture every --flood-every s (one subscriber, --flood-topics
distinct 1,000-byte topics, from a new loopback address each time) and, from --cap-phase of the
run on, decodable invented stream ids past the stream cap (after which every new id is
`too_many_streams`). RSS (VmRSS from /proc) and both processes' metrics are sampled every
--sample-every s.

At the end it checks, and writes to --out: the monitor stayed up; every frame the capture
numbered is decoded, rejected by cause or lost (capture --stats against the monitor's report);
every hostile message is in a cause it was built for (a feasibility check over the causes each
message may land in); RSS against the bounds of docs/guarantees.md; no traceback in either
process's stderr; the report is strict JSON. Exit status 1 when a check fails.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, deque
from pathlib import Path

import numpy as np
import zmq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # field_helpers
sys.path.insert(0, str(REPO / "tests" / "system"))  # the attack builders of the hostile and fuzz suites

from edgepipe.server.monitor import DEFAULT_LIMITS  # noqa: E402
from edgepipe.transport.protocol import FrameHeader  # noqa: E402
from edgepipe.transport.sockets import DEFAULTS, free_tcp_endpoint  # noqa: E402

from field_helpers import Feeder  # noqa: E402
from test_fuzz import Fuzzer  # noqa: E402
from test_hostile import FLOODER, forged, strict_json  # noqa: E402

SHARED = Path(os.environ.get("EDGEPIPE_SHARED_DATA", REPO.parent / "shared" / "data"))
REAL = "soak-cam"
MIB = 1024 * 1024
# docs/guarantees.md, Memory: the monitor holds at most 128 MiB (receive queue) + about 3 x 64 MiB
# (transport) of message bytes whatever is sent; the capture, one subscription burst of 5,000
# 1,000-byte topics: up to about 240 MB, freed for reuse and not repeated by the banned peer.
MONITOR_BOUND_MB = (DEFAULT_LIMITS.queue_bytes + 3 * DEFAULTS.max_message_bytes) / 1e6
CAPTURE_BOUND_MB = 240.0 * 1.05  # "about 240 MB": 5 % allowed; the strict figure is in the JSON too
# messages that need a stream slot at the monitor (a new id): past the stream cap they are too_many_streams
NEEDS_SLOT = {"invented_id", "decodable_id", "fuzz.waiting", "fuzz.hevc_garbage", "fuzz.jpeg_garbage",
              "fuzz.new_stream"}
TRACEBACK_MARKS = ("Traceback (most recent call last)", "terminate called", "Segmentation fault", "core dumped")


# --- process helpers ------------------------------------------------------------------------------

def child_env() -> dict[str, str]:
    """The processes run the same edgepipe tree as this script (a snapshot of a commit, say)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def code_label() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "edgepipe"],
                               capture_output=True, text=True).stdout.strip()
        return head + (" + uncommitted changes in edgepipe/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("EDGEPIPE_CODE_LABEL", f"tree at {REPO} (not a git checkout)")


def shown_path(path: str) -> str:
    p = Path(path).resolve()
    try:
        return "../shared/data/" + str(p.relative_to(SHARED.resolve()))
    except ValueError:
        return str(p)


def edgepipe_cmd() -> list[str]:
    script = Path(sys.executable).with_name("edgepipe")
    return [str(script)] if script.exists() else [sys.executable, "-m", "edgepipe.cli"]


def vm_kb(pid: int, field: str = "VmRSS") -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def scrape(port: int) -> dict[str, float]:
    """Prometheus text as {"name{label=value,...}": value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def try_scrape(port: int) -> dict[str, float]:
    try:
        return scrape(port)
    except Exception:  # a process that is stopping or busy: a missing sample, not a failure
        return {}


def free_port() -> int:
    return int(free_tcp_endpoint().rsplit(":", 1)[1])


class Sampler(threading.Thread):
    """Every `every` s: VmRSS of both processes and what their bounded structures hold."""

    def __init__(self, procs: dict[str, subprocess.Popen], ports: dict[str, int], t0: float, every: float):
        super().__init__(daemon=True, name="rss-sampler")
        self.procs, self.ports, self.t0, self.every = procs, ports, t0, every
        self.series: list[dict] = []
        self.held_max: Counter = Counter()
        self.stop = threading.Event()

    def sample(self) -> dict:
        row = {"t": round(time.monotonic() - self.t0, 1)}
        for name, proc in self.procs.items():
            kb = vm_kb(proc.pid)
            row[name] = round(kb / 1024, 1) if kb is not None else None
        mon = try_scrape(self.ports["monitor"])
        for key, value in mon.items():
            if key.startswith("edgepipe_monitor_held{"):
                self.held_max["monitor." + key.split("=", 1)[1].rstrip("}")] = max(
                    self.held_max["monitor." + key.split("=", 1)[1].rstrip("}")], value)
        cap = try_scrape(self.ports["capture"])
        if "edgepipe_capture_topics_live" in cap:
            self.held_max["capture.topics_live"] = max(self.held_max["capture.topics_live"],
                                                       cap["edgepipe_capture_topics_live"])
        self.series.append(row)
        return row

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.every)


class Flood(threading.Thread):
    """One subscription flood: FLOODER (tests/system/test_hostile.py) in its own process, from
    `source_ip`, `topics` distinct 1,000-byte topics; held until the capture bans it, then killed."""

    def __init__(self, capture_endpoint: str, source_ip: str, topics: int, capture_metrics: int, hold_s: float,
                 t0: float, rss_of_capture):
        super().__init__(daemon=True, name=f"flood-{source_ip}")
        self.endpoint, self.source_ip, self.topics = capture_endpoint, source_ip, topics
        self.metrics_port, self.hold_s, self.t0, self.rss = capture_metrics, hold_s, t0, rss_of_capture
        self.result: dict = {}

    def run(self) -> None:
        before = try_scrape(self.metrics_port)
        floods0 = before.get("edgepipe_capture_subscription_floods_total", 0)
        rss0 = self.rss()
        started = time.monotonic()
        target = f"tcp://{self.source_ip}:0;{self.endpoint[len('tcp://'):]}"
        proc = subprocess.Popen([sys.executable, "-c", FLOODER, target, str(self.topics)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        banned_after = None
        peak = rss0 or 0.0
        try:
            deadline = started + self.hold_s
            while time.monotonic() < deadline:
                m = try_scrape(self.metrics_port)
                peak = max(peak, self.rss() or 0.0)
                if banned_after is None and m.get("edgepipe_capture_subscription_floods_total", 0) > floods0:
                    banned_after = round(time.monotonic() - started, 2)
                time.sleep(0.25)
        finally:
            proc.kill()
            _, err = proc.communicate(timeout=10)
        self.result = {"at_s": round(started - self.t0, 1), "source": self.source_ip, "topics": self.topics,
                       "banned_after_s": banned_after, "capture_rss_before_mb": round(rss0 or 0, 1),
                       "capture_rss_peak_mb": round(peak, 1), "flooder_stderr": err.decode(errors="replace")[-300:]}


# --- the relay and the attacker -------------------------------------------------------------------

class Relay:
    """Capture -> (this process) -> monitor, with hostile messages in between. Single-threaded:
    one SUB to the capture, one Feeder (XPUB, NODROP) the monitor subscribes to."""

    def __init__(self, capture_endpoint: str, monitor_metrics: int, args, t0: float):
        self.args, self.t0, self.metrics_port = args, t0, monitor_metrics
        ctx = zmq.Context.instance()
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.connect(capture_endpoint)
        self.feeder = Feeder(hwm=1000)
        self.endpoint = self.feeder.endpoint
        self.poller = zmq.Poller()
        self.poller.register(self.sub, zmq.POLLIN)
        self.poller.register(self.feeder.sock, zmq.POLLIN)
        self.subscribed = False
        self.rng = np.random.default_rng(20240611)
        self.fuzz = Fuzzer(self.rng, [])
        self.recent: deque = deque(maxlen=100)  # recent real messages, for replays
        self.fuzz.real = self.recent
        # real stream
        self.real_epoch: int | None = None
        self.real_forwarded = 0
        self.real_eos: FrameHeader | None = None
        self.last_real: list[bytes] | None = None
        self.last_key: list[bytes] | None = None
        self.last_seq = -1
        self.first_real_at: float | None = None
        # hostile bookkeeping
        self.groups: Counter = Counter()  # frozenset(causes) -> messages that must land in one of them
        self.kind_sent: Counter = Counter()
        self.kind_causes: dict[str, set] = {}
        self.counted = 0  # what the monitor's `messages` must reach once it has handled all we sent
        self.pending_eos = False  # a forged end of stream on the live epoch awaits its refutation
        self.hostile_sent = 0
        self.oversize: list[dict] = []
        self.syncs: list[dict] = []
        self.cap_phase_from: float | None = None
        self.decodable_ids = 0
        self.evil_seq = 0
        self._evil_key: list[bytes] | None = None
        self._epochs = itertools.count(1_000_000)
        self._ghost_epochs = itertools.count(3_000_000_000)
        self._ids = itertools.count()
        nan, inf = float("nan"), float("inf")
        self._bad_times = itertools.cycle(  # the capture time, and the stream clock of wire version 3
            [("capture_time", v) for v in (nan, inf, -inf, -5.0, 1e300)]
            + [("media_time", v) for v in (nan, inf, -1.0)] + [("duration", v) for v in (nan, inf, -1.0, 1e6)])
        self.big = bytes(DEFAULTS.max_message_bytes + MIB)  # over the monitor's MAXMSGSIZE
        self.errors: list[str] = []
        self._credit, self._credit_at = 0.0, None
        attacks = [self.seq_jump, self.bad_time, self.forged_epoch_p, self.forged_epoch_garbage, self.invented_id,
                   self.model_id_row, self.eos_live, self.eos_backwards, self.eos_ghost_epoch, self.eos_ghost_stream,
                   self.replay, self.bad_version, self.garbage]
        self._attacks = itertools.cycle(attacks)
        self._turn = itertools.count()

    # -- sending ---------------------------------------------------------------------------------

    def _send(self, parts: list[bytes]) -> None:
        while not self.subscribed:  # never into the void: an XPUB drops what nobody subscribed to
            self._subscriptions(timeout_ms=100, must=True)
        self.feeder.send(parts, timeout=30.0)

    def _subscriptions(self, timeout_ms: int = 0, must: bool = False) -> list[bytes]:
        seen = []
        if self.feeder.sock.poll(timeout_ms):
            while True:
                try:
                    msg = self.feeder.sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                seen.append(msg)
                if msg[:1] == b"\x01":
                    self.subscribed = True
                elif msg[:1] == b"\x00":
                    self.subscribed = False
        return seen

    def forward_real(self, parts: list[bytes]) -> None:
        h = FrameHeader.unpack(parts[0])
        if h.stream_id != REAL:
            self.errors.append(f"unexpected stream {h.stream_id!r} from the capture")
        if h.end_of_stream:
            self.real_eos = h
            self._send(parts)
            return
        if self.real_epoch is None:
            self.real_epoch = h.epoch
            self.first_real_at = time.monotonic()
        elif h.epoch != self.real_epoch:
            self.errors.append(f"capture epoch changed {self.real_epoch} -> {h.epoch}")
        self._send(parts)
        self.counted += 1 + self._refute_pending()
        self.real_forwarded += 1
        self.last_real, self.last_seq = parts, h.seq
        if h.keyframe:
            self.last_key = parts
        self.recent.append(parts)

    def _refute_pending(self) -> int:
        """A frame at or past the live epoch's next seq proves a pending forged end of stream false:
        the monitor then counts that end-of-stream message (bogus_end_of_stream)."""
        if self.pending_eos:
            self.pending_eos = False
            return 1
        return 0

    def hostile(self, parts, causes: set[str], kind: str, counted: int = 1) -> None:
        if kind in NEEDS_SLOT and self.cap_phase_from is not None:
            causes = set(causes) | {"too_many_streams"}
        self._send(parts)
        self.counted += counted
        self.groups[frozenset(causes)] += 1
        self.kind_sent[kind] += 1
        self.kind_causes.setdefault(kind, set()).update(causes)
        self.hostile_sent += 1

    # -- the attacks of issue 11 (builders as in tests/system/test_hostile.py) ---------------------

    def seq_jump(self):
        self.hostile(forged(self.last_real, seq=2**64 - 1), {"seq_jump"}, "seq_jump", 1 + self._refute_pending())

    def bad_time(self):  # the real frame's next seq with a poisoned time: rejected before it touches the stream
        field, value = next(self._bad_times)
        if field != "capture_time" and FrameHeader.unpack(self.last_real[0]).media_time is None:
            field = "capture_time"  # a frame without a stream clock (wire version 1) has no such field
        self.hostile(forged(self.last_real, seq=self.last_seq + 1, **{field: value}), {"bad_time"},
                     f"bad_time.{field}")

    def forged_epoch_p(self):  # a P-frame of a new epoch of the real stream id
        self.hostile(forged(self.last_real, epoch=self._epoch(), seq=0, keyframe=False), {"waiting_for_keyframe"},
                     "forged_epoch_p")

    def forged_epoch_garbage(self):  # a garbage "keyframe" of a new epoch of the real stream id
        parts = forged(self.last_real, epoch=self._epoch(), seq=0, keyframe=True)[:1] + [os.urandom(1500)]
        self.hostile(parts, {"undecodable", "no_picture"}, "forged_epoch_garbage")

    def invented_id(self):  # never decodable: folded under the stream cap, never starving the real one
        parts = forged(self.last_real, stream_id=f"inv-{next(self._ids)}", seq=0, keyframe=False)
        self.hostile(parts, {"waiting_for_keyframe"}, "invented_id")

    def model_id_row(self):  # a decodable stream whose every frame claims another model id and QP
        if self.last_key is self._evil_key:
            # one copy per keyframe: the capture's later keyframes are CRA pictures, and the same CRA
            # twice in one decoder gives no picture the second time (a counted no_picture, not this attack)
            return self.invented_id()
        self._evil_key = self.last_key
        n = self.evil_seq
        self.evil_seq += 1
        parts = forged(self.last_key, stream_id="evil-rows", epoch=77, seq=n, model_id=f"model-{n}", qp=n % 52)
        self.hostile(parts, {"decoded", "too_many_rows"}, "model_id_row")

    def decodable_id(self):  # a real keyframe under a new stream id: decodes until the stream cap is full
        self.decodable_ids += 1
        parts = forged(self.last_key, stream_id=f"kf-{next(self._ids)}", epoch=1, seq=0, model_id="none")
        self.hostile(parts, {"decoded", "too_many_streams"}, "decodable_id")

    def _eos(self, **fields) -> list[bytes]:
        h = FrameHeader.unpack(self.last_real[0])
        for k, v in fields.items():
            setattr(h, k, v)
        h.end_of_stream, h.keyframe = True, False
        return [h.pack(), b""]

    def eos_live(self):  # the live epoch "ends" at the next seq: the next real frame proves it false
        parts = self._eos(seq=self.last_seq + 1)
        if self.pending_eos:  # one is already pending: this one is incredible at once
            self.hostile(parts, {"bad_end_of_stream"}, "eos_live")
        else:
            self.pending_eos = True
            self.hostile(parts, {"bogus_end_of_stream"}, "eos_live", counted=0)  # counted when refuted

    def eos_backwards(self):
        if self.last_seq < 5:
            return self.eos_ghost_epoch()
        self.hostile(self._eos(seq=self.last_seq - 4), {"bad_end_of_stream"}, "eos_backwards")

    def eos_ghost_epoch(self):  # an epoch of the real stream id that never existed: unmatched, nothing moves
        self.hostile(self._eos(epoch=next(self._ghost_epochs), seq=10), {"eos_unmatched"}, "eos_ghost_epoch", 0)

    def eos_ghost_stream(self):
        self.hostile(self._eos(stream_id=f"ghost-{next(self._ids)}", seq=10), {"eos_unmatched"},
                     "eos_ghost_stream", 0)

    def replay(self):
        parts = self.recent[int(self.rng.integers(0, len(self.recent)))]
        self.hostile(list(parts), {"out_of_order"}, "replay")

    def bad_version(self):
        raw = bytearray(self.last_real[0])
        raw[2] = 9
        self.hostile([bytes(raw), self.last_real[1]], {"bad_version"}, "bad_version")

    def garbage(self):
        self.hostile([os.urandom(40)], {"bad_framing"}, "garbage")

    def fuzz_one(self):
        """One message of tests/system/test_fuzz.py's Fuzzer (its kinds, its expected causes)."""
        kind = self.fuzz.kinds[int(self.fuzz.rng.integers(0, len(self.fuzz.kinds)))]
        parts, causes = kind(len(self.recent))
        self.hostile(parts, causes, f"fuzz.{kind.__name__}")

    def _epoch(self) -> int:
        e = next(self._epochs)
        return e if e != self.real_epoch else next(self._epochs)

    def attack(self, in_cap_phase: bool) -> None:
        """One hostile message: the issue's attacks and the fuzzer's kinds in turn; during the cap
        phase every other one is a decodable invented stream id until the cap is well past."""
        turn = next(self._turn)
        if in_cap_phase and turn % 2 == 0 and self.decodable_ids < DEFAULT_LIMITS.max_streams + 64:
            return self.decodable_id()
        if turn % 2:
            return self.fuzz_one()
        return next(self._attacks)()

    # -- the oversize message and the sync points ----------------------------------------------------

    def monitor_messages(self) -> float | None:
        return try_scrape(self.metrics_port).get("edgepipe_monitor_messages_total")

    def sync(self, timeout: float, why: str) -> bool:
        """Wait until the monitor has handled every message sent so far (its `messages` counter)."""
        t = time.monotonic()
        got = None
        while time.monotonic() - t < timeout:
            got = self.monitor_messages()
            if got is not None and got >= self.counted:
                break
            time.sleep(0.05)
        ok = got == self.counted
        self.syncs.append({"at_s": round(t - self.t0, 1), "why": why, "expected": self.counted, "got": got,
                           "ok": ok, "waited_s": round(time.monotonic() - t, 2)})
        return ok

    def send_oversize(self) -> None:
        """As test_hostile.oversize_and_wait_for_the_repair: libzmq at the monitor drops the
        connection (it unsubscribes) and the monitor must connect again (it subscribes again)."""
        self.sync(20, "before oversize")  # nothing of ours may be queued behind it on the dying connection
        t = time.monotonic()
        header = FrameHeader("evil-big", 0, 1.0, "hevc", 4096, 4096, 30, True).pack()
        self.feeder.send([header, self.big], timeout=30.0)
        seen: list[bytes] = []
        dropped_at = repaired_at = None
        deadline = t + 30
        while time.monotonic() < deadline and repaired_at is None:
            for msg in self._subscriptions(timeout_ms=100):
                seen.append(msg[:1])
                if msg[:1] == b"\x00" and dropped_at is None:
                    dropped_at = time.monotonic() - t
                if msg[:1] == b"\x01" and dropped_at is not None:
                    repaired_at = time.monotonic() - t
        self.oversize.append({"at_s": round(t - self.t0, 1), "bytes": len(self.big),
                              "dropped_after_s": None if dropped_at is None else round(dropped_at, 2),
                              "resubscribed_after_s": None if repaired_at is None else round(repaired_at, 2),
                              "subscription_messages": [m.hex() for m in seen]})
        if repaired_at is None:
            self.errors.append(f"no resubscription within 30 s after the oversize message at {t - self.t0:.0f} s")
            self.subscribed = dropped_at is None and self.subscribed

    # -- the main loop -------------------------------------------------------------------------------

    def pump(self, attack_until: float | None, cap_phase_at: float | None, timers: dict) -> bool:
        """Forward what the capture sent (with hostile messages after each real frame while attacking);
        run due timers. Returns False once the capture's end of stream has been forwarded."""
        now = time.monotonic()
        attacking = attack_until is not None and now < attack_until
        for name, (due, every, fn) in list(timers.items()):
            if attacking and now >= due and self.last_real is not None:
                fn()
                timers[name] = (time.monotonic() + every, every, fn)
        ready = dict(self.poller.poll(20))
        if self.feeder.sock in ready:
            self._subscriptions()
        if self.sub in ready:
            for _ in range(50):
                try:
                    parts = self.sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self.forward_real(parts)
                if self.real_eos is not None:
                    return False
                now = time.monotonic()
                if attack_until is not None and now < attack_until and self.last_key is not None:
                    in_cap = cap_phase_at is not None and now >= cap_phase_at
                    if in_cap and self.cap_phase_from is None:
                        self.cap_phase_from = round(now - self.t0, 1)
                    # a steady rate between real frames; after a pause (a repair) at most 0.2 s worth at once
                    since = now - (self._credit_at if self._credit_at is not None else now)
                    self._credit = min(self._credit + self.args.rate * since, max(1.0, self.args.rate * 0.2))
                    self._credit_at = now
                    while self._credit >= 1.0:
                        self._credit -= 1.0
                        self.attack(in_cap)
        return True

    def close(self) -> None:
        self.sub.close(0)
        self.feeder.close()


# --- checks ---------------------------------------------------------------------------------------

def feasible(groups: Counter, got: Counter) -> bool:
    """Whether the messages can be assigned to the causes the monitor counted, each message to one
    cause it may land in and every count used up: a transportation problem (max flow, source ->
    groups of messages with the same possible causes -> causes -> sink) whose flow must be total."""
    total = sum(groups.values())
    if total != sum(got.values()):
        return False
    gs, cs = list(groups), sorted(got)
    n = 2 + len(gs) + len(cs)
    src, sink = 0, n - 1
    cap = [[0] * n for _ in range(n)]
    for i, g in enumerate(gs, 1):
        cap[src][i] = groups[g]
        for j, c in enumerate(cs, 1 + len(gs)):
            if c in g:
                cap[i][j] = total
    for j, c in enumerate(cs, 1 + len(gs)):
        cap[j][sink] = got[c]
    flow = 0
    while True:  # Edmonds-Karp
        parent = [-1] * n
        parent[src] = src
        queue = deque([src])
        while queue and parent[sink] == -1:
            u = queue.popleft()
            for v in range(n):
                if parent[v] == -1 and cap[u][v] > 0:
                    parent[v] = u
                    queue.append(v)
        if parent[sink] == -1:
            return flow == total
        push, v = total, sink
        while v != src:
            push = min(push, cap[parent[v]][v])
            v = parent[v]
        v = sink
        while v != src:
            cap[parent[v]][v] -= push
            cap[v][parent[v]] += push
            v = parent[v]
        flow += push


def summarize(values: list[float]) -> dict:
    v = [x for x in values if x is not None]
    if not v:
        return {}
    return {"min": min(v), "median": round(statistics.median(v), 1), "max": max(v), "n": len(v)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="length of the attack (0.5 for a smoke run)")
    ap.add_argument("--source", default=str(SHARED / "video" / "car-detection.mp4"),
                    help="capture source (looped, paced at its frame rate)")
    ap.add_argument("--size", default="384x216")
    ap.add_argument("--gop", type=int, default=30)
    ap.add_argument("--qp", type=int, default=32)
    ap.add_argument("--classify", action="store_true", help="let the monitor classify (default: --no-classify)")
    ap.add_argument("--rate", type=float, default=100.0, help="hostile messages per second")
    ap.add_argument("--oversize-every", type=float, default=20.0, help="seconds between oversize messages")
    ap.add_argument("--flood-every", type=float, default=40.0, help="seconds between subscription floods")
    ap.add_argument("--flood-topics", type=int, default=5000)
    ap.add_argument("--flood-hold", type=float, default=10.0, help="seconds each flooder is left running")
    ap.add_argument("--cap-phase", type=float, default=0.75,
                    help="fraction of the run after which decodable invented ids overflow the stream cap")
    ap.add_argument("--sample-every", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=8.0, help="seconds of real frames before the attack")
    ap.add_argument("--tail", type=float, default=5.0, help="seconds of real frames after the attack")
    ap.add_argument("--work", default=None, help="folder for the report, stats and stderr (default: a temp dir)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "hostile_soak.json"))
    args = ap.parse_args()

    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="hostile-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    started_utc = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    capture_ep, control_ep = free_tcp_endpoint(), free_tcp_endpoint()
    ports = {"monitor": free_port(), "capture": free_port()}
    report_path, stats_path = work / "report.json", work / "stats.json"
    relay = Relay(capture_ep, ports["monitor"], args, t0)
    files = {name: (open(work / f"{name}.stdout", "w"), open(work / f"{name}.stderr", "w"))
             for name in ("monitor", "capture")}
    mon_cmd = edgepipe_cmd() + ["monitor", "--connect", relay.endpoint, "--control", control_ep, "--report",
                                str(report_path), "--metrics", f"127.0.0.1:{ports['monitor']}"]
    if not args.classify:
        mon_cmd.append("--no-classify")
    cap_cmd = edgepipe_cmd() + ["capture", "--source", args.source, "--loop", "--realtime", "--size", args.size,
                                "--gop", str(args.gop), "--qp", str(args.qp), "--publish", capture_ep,
                                "--control", control_ep, "--stream-id", REAL, "--stats", str(stats_path),
                                "--metrics", f"127.0.0.1:{ports['capture']}", "--wait-subscriber", "30"]
    procs: dict[str, subprocess.Popen] = {}
    floods: list[Flood] = []
    notes: list[str] = []
    sampler = None
    baseline: dict = {}
    final_metrics: dict = {"monitor": {}, "capture": {}}
    hwm: dict = {}
    monitor_alive_at_end, cap_rc, mon_rc, attack_s = False, None, None, 0.0
    try:
        procs["monitor"] = subprocess.Popen(mon_cmd, stdout=files["monitor"][0], stderr=files["monitor"][1],
                                            env=child_env())
        deadline = time.monotonic() + 120
        while not relay.subscribed:
            relay._subscriptions(timeout_ms=200)
            assert time.monotonic() < deadline and procs["monitor"].poll() is None, "the monitor never subscribed"
        procs["capture"] = subprocess.Popen(cap_cmd, stdout=files["capture"][0], stderr=files["capture"][1],
                                            env=child_env())
        sampler = Sampler(procs, ports, t0, args.sample_every)
        sampler.start()
        deadline = time.monotonic() + 120
        while relay.first_real_at is None:
            relay.pump(None, None, {})
            assert time.monotonic() < deadline and procs["capture"].poll() is None, "no frame from the capture"
        warm_end = time.monotonic() + args.warmup
        while time.monotonic() < warm_end:
            relay.pump(None, None, {})
        baseline = sampler.sample()
        attack_start = time.monotonic()
        attack_until = attack_start + args.minutes * 60
        cap_phase_at = attack_start + args.cap_phase * args.minutes * 60
        flood_n = itertools.count(2)

        def start_flood():
            f = Flood(capture_ep, f"127.0.0.{next(flood_n)}", args.flood_topics, ports["capture"], args.flood_hold,
                      t0, lambda: (vm_kb(procs["capture"].pid) or 0) / 1024)
            f.start()
            floods.append(f)

        timers = {"oversize": (attack_start + min(args.oversize_every / 2, 10), args.oversize_every,
                               relay.send_oversize),
                  "flood": (attack_start + min(5.0, args.minutes * 60 / 4), args.flood_every, start_flood)}
        while time.monotonic() < attack_until:
            relay.pump(attack_until, cap_phase_at, timers)
            for name, p in procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode} during the attack")
        attack_s = time.monotonic() - attack_start
        tail_end = time.monotonic() + args.tail
        while time.monotonic() < tail_end:
            relay.pump(None, None, {})
        for f in floods:
            f.join(args.flood_hold + 15)
        relay.sync(30, "end of attack")
        final_metrics = {"monitor": try_scrape(ports["monitor"]), "capture": try_scrape(ports["capture"])}
        hwm = {name: round((vm_kb(p.pid, "VmHWM") or 0) / 1024, 1) for name, p in procs.items()}
        monitor_alive_at_end = procs["monitor"].poll() is None
        procs["capture"].send_signal(signal.SIGINT)
        deadline = time.monotonic() + 60
        while relay.pump(None, None, {}) and time.monotonic() < deadline:
            pass
        if relay.real_eos is None:
            notes.append("the capture's end-of-stream message never reached the relay")
        cap_rc = procs["capture"].wait(60)
        relay.sync(30, "after the capture's end of stream")
        sampler.stop.set()
        sampler.join(10)
        procs["monitor"].send_signal(signal.SIGINT)
        mon_rc = procs["monitor"].wait(60)
    except Exception as exc:  # recorded as a failed check below, with the processes' stderr
        import traceback

        notes.append("the soak stopped early: " + "".join(traceback.format_exception_only(type(exc), exc)).strip())
        relay.errors.append(notes[-1])
    finally:
        if sampler is not None:
            sampler.stop.set()
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        for out, err in files.values():
            out.close()
            err.close()
        relay.close()
    duration_s = time.monotonic() - t0
    load_end = os.getloadavg()

    # --- what came out ---------------------------------------------------------------------------
    stderr = {name: (work / f"{name}.stderr").read_text(errors="replace") for name in procs}
    checks: dict[str, dict] = {}
    try:
        report = strict_json(report_path)
        checks["report_is_strict_json"] = {"pass": True}
    except Exception as exc:
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        checks["report_is_strict_json"] = {"pass": False, "detail": repr(exc)[:300]}
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}

    # monitor up
    sync_fail = [s for s in relay.syncs if not s["ok"]]
    checks["monitor_stayed_up"] = {
        "pass": monitor_alive_at_end and mon_rc == 0 and cap_rc == 0 and not relay.errors and not sync_fail,
        "monitor_alive_at_end": monitor_alive_at_end, "monitor_rc": mon_rc, "capture_rc": cap_rc,
        "transport_healthy_at_end": final_metrics["monitor"].get("edgepipe_monitor_transport_healthy"),
        "relay_errors": relay.errors, "syncs": len(relay.syncs), "syncs_failed": sync_fail}

    # every real frame decoded or counted
    drops = stats.get("drops", {})
    after_encode = drops.get("network_hwm_after_encode", 0) + drops.get("reference_dropped_after_encode", 0)
    numbered = stats.get("frames_sent", 0) + after_encode
    real_state = [s for s in report.get("streams", []) if s["stream"] == REAL and s["epoch"] == relay.real_epoch]
    real_state = real_state[0] if real_state else {}
    real_decoded = sum(r["frames"] for r in report.get("rows", []) if r["stream"] == REAL)
    received, lost = real_state.get("received", 0), real_state.get("lost", 0)
    real_rejects = received - real_decoded
    checks["every_real_frame_decoded_or_counted"] = {
        "pass": bool(real_state) and numbered == received + lost and received == relay.real_forwarded
        and real_state.get("ended") is True and stats.get("end_of_stream") == "sent" and real_rejects >= 0
        and stats.get("epoch") == relay.real_epoch,
        "capture_frames_sent": stats.get("frames_sent"), "capture_drops": drops,
        "capture_frames_unsubscribed": stats.get("frames_unsubscribed"),
        "numbered (frames_sent + drops after encode)": numbered,
        "relay_forwarded": relay.real_forwarded, "monitor_received": received, "monitor_decoded": real_decoded,
        "monitor_rejected_real (received - decoded)": real_rejects, "monitor_lost": lost,
        "ended": real_state.get("ended", False), "capture_end_of_stream": stats.get("end_of_stream"),
        "identity": f"{numbered} numbered = {real_decoded} decoded + {real_rejects} rejected + {lost} lost"}

    # every hostile message counted by cause
    got = Counter(report.get("rejects", {}))
    got["decoded"] = report.get("decoded", 0)
    eos = report.get("end_of_stream", {})
    got["eos_matched"], got["eos_unmatched"] = eos.get("matched", 0), eos.get("unmatched", 0)
    groups = Counter(relay.groups)
    groups[frozenset({"decoded"})] += real_decoded
    if real_rejects:
        groups[frozenset({"waiting_for_keyframe", "unprocessed_at_stop"})] += real_rejects
    groups[frozenset({"eos_matched"})] += 1 if relay.real_eos is not None else 0
    ok = feasible(groups, got)
    per_cause = {}
    for c in sorted(set(got) | set().union(*groups)):
        per_cause[c] = {"counted": got[c], "exactly_this": sum(n for g, n in groups.items() if g == {c}),
                        "may_be_this": sum(n for g, n in groups.items() if c in g)}
    transport = report.get("transport", {})
    bans = final_metrics["capture"].get("edgepipe_capture_bans_total")
    flood_count = final_metrics["capture"].get("edgepipe_capture_subscription_floods_total")
    evil_rows = [r for r in report.get("rows", []) if r["stream"] == "evil-rows"]
    checks["every_hostile_message_counted_by_cause"] = {
        "pass": ok and report.get("messages") == report.get("decoded", 0) + sum(report.get("rejects", {}).values())
        and transport.get("drops") == len(relay.oversize) == transport.get("repairs")
        and flood_count == len(floods) == bans and len(evil_rows) == DEFAULT_LIMITS.max_rows_per_stream,
        "hostile_delivered": relay.hostile_sent, "oversize_sent": len(relay.oversize),
        "transport_drops": transport.get("drops"), "transport_repairs": transport.get("repairs"),
        "floods_sent": len(floods), "capture_floods_counted": flood_count, "capture_bans": bans,
        "evil_rows_rows": len(evil_rows), "causes_feasible": ok, "per_cause": per_cause,
        "messages": report.get("messages"), "decoded": report.get("decoded"),
        "sum_rejects": sum(report.get("rejects", {}).values())}

    # RSS: from the attack's start on (the baseline is the sample just before it)
    series = sampler.series if sampler is not None else []
    attack_rows = [r for r in series if r["t"] >= baseline.get("t", 0)]
    rss = {}
    for name, bound in (("monitor", MONITOR_BOUND_MB), ("capture", CAPTURE_BOUND_MB)):
        vals = [r[name] for r in attack_rows if r.get(name) is not None]
        base = baseline.get(name)
        peak = max(vals + [hwm.get(name) or 0]) if vals else None
        rss[name] = {**summarize(vals), "baseline_mb": base, "vm_hwm_mb": hwm.get(name), "peak_mb": peak,
                     "growth_mb": round(peak - base, 1) if base is not None and peak is not None else None,
                     "bound_mb": round(base + bound, 1) if base is not None else None,
                     "bound_rule": f"baseline + {bound:.0f} MB (docs/guarantees.md"
                                   + (": about 240 MB for a 5,000-topic burst, +5 %)" if name == "capture" else
                                      ": 128 MiB queue + 3 x 64 MiB transport)"),
                     "last_mb": vals[-1] if vals else None,
                     "within_bound": base is not None and peak is not None and peak <= base + bound}
    flood_peaks = [f.result.get("capture_rss_peak_mb") for f in floods if f.result]
    checks["rss_within_bound"] = {
        "pass": all(v["within_bound"] for v in rss.values()),
        **{k: {"peak_mb": v["peak_mb"], "baseline_mb": v["baseline_mb"], "growth_mb": v["growth_mb"],
               "bound_mb": v["bound_mb"]} for k, v in rss.items()},
        "capture_peak_per_flood_mb": flood_peaks}

    found = {name: [m for m in TRACEBACK_MARKS if m in text] for name, text in stderr.items()}
    checks["no_traceback"] = {"pass": not any(found.values()), "found": found,
                              "stderr_lines": {n: t.count("\n") for n, t in stderr.items()}}

    passed = all(c["pass"] for c in checks.values())
    cap_m = final_metrics["capture"]
    result = {
        "command": "python bench/hostile_soak.py " + " ".join(sys.argv[1:]), "niceness": os.nice(0),
        "code": code_label(),
        "started_utc": started_utc, "duration_s": round(duration_s, 1), "attack_s": round(attack_s, 1),
        "load_average_start": [round(x, 2) for x in load_start], "load_average_end": [round(x, 2) for x in load_end],
        "cpus": os.cpu_count(), "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "setup": {"source": shown_path(args.source), "size": args.size, "gop": args.gop,
                  "qp": args.qp, "classify": args.classify, "hostile_rate_per_s": args.rate,
                  "oversize_every_s": args.oversize_every, "flood_every_s": args.flood_every,
                  "flood_topics": args.flood_topics, "cap_phase_from_s": relay.cap_phase_from,
                  "monitor_limits": {"max_streams": DEFAULT_LIMITS.max_streams,
                                     "max_rows_per_stream": DEFAULT_LIMITS.max_rows_per_stream,
                                     "max_decoders": DEFAULT_LIMITS.max_decoders},
                  "work_dir": str(work)},
        "pass": passed,
        "checks": checks,
        "hostile_sent_by_kind": dict(sorted(relay.kind_sent.items())),
        "hostile_causes_by_kind": {k: sorted(v) for k, v in sorted(relay.kind_causes.items())},
        "monitor_report": {k: report.get(k) for k in ("messages", "decoded", "lost", "rejects", "end_of_stream",
                                                       "transport", "expired")},
        "capture_stats": {k: stats.get(k) for k in ("frames_sent", "frames_unsubscribed", "drops", "keyframes",
                                                     "keyframe_requests", "loop_fps", "end_of_stream", "epoch")},
        "capture_metrics": {k: v for k, v in cap_m.items() if any(s in k for s in (
            "forced_keyframes", "keyframe_requests", "control_rejects", "bans", "subscription_floods",
            "auth_refused", "bad_subscriptions", "frames_unsubscribed"))},
        "oversize": relay.oversize,
        "floods": [f.result for f in floods],
        "held_max": dict(sorted((k, v) for k, v in sampler.held_max.items())) if sampler else {},
        "rss_mb": rss,
        "rss_series": [[r["t"], r.get("monitor"), r.get("capture")] for r in series],
        "syncs": relay.syncs,
        "notes": notes,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    for name, c in checks.items():
        print(f"{'PASS' if c['pass'] else 'FAIL'}  {name}")
    print(f"hostile messages {relay.hostile_sent} (+{len(relay.oversize)} oversize, {len(floods)} floods), real "
          f"frames {relay.real_forwarded}; monitor RSS max {rss['monitor'].get('max')} MB, capture "
          f"{rss['capture'].get('max')} MB; load {load_start[0]:.2f} -> {load_end[0]:.2f}; written to {out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
