"""Which streams a monitor takes: ZeroMQ subscriptions from `--streams` or `--shard` (docs/relay.md).

Every message a capture of this release sends starts with its stream's topic (wire version 5,
protocol.py): b"EP\x05", a bucket byte (the first byte of SHA-256 of the stream id), the stream id with its
length; the captures of the release before sent the same topic as version 4 (b"EP\x04"). ZeroMQ filters by
prefix at the sender (a capture or a relay), so:

    no flag          b""                            everything, every version (also hostile bytes: counted)
    --streams a,b    each stream's full topic,      exactly those streams
                     in versions 4 and 5
    --shard K/N      b"EP\x04" + bucket and        the streams whose bucket % N == K: the N shards of
                     b"EP\x05" + bucket, for every  one N are disjoint and together take every stream
                     bucket with bucket % N == K

Sharded and named subscriptions match versions 4 and 5 only: the frames of a capture older than version 4
reach only monitors without a flag.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgepipe.core.errors import EdgepipeError
from edgepipe.transport.protocol import BUCKETS, TOPIC_VERSIONS, bucket_topic, stream_bucket, stream_topic

EVERYTHING = b""


@dataclass(frozen=True)
class StreamSelection:
    streams: tuple[str, ...] = ()
    shard: tuple[int, int] | None = None  # (K, N)

    def topics(self) -> list[bytes]:
        """In every wire version with a topic, this release's (5) first: a capture of the release before sends
        version 4."""
        versions = sorted(TOPIC_VERSIONS, reverse=True)
        if self.streams:
            return [stream_topic(s, v) for v in versions for s in self.streams]
        if self.shard is not None and self.shard[1] > 1:
            k, n = self.shard
            return [bucket_topic(b, v) for v in versions for b in range(BUCKETS) if b % n == k]
        return [EVERYTHING]

    def takes(self, stream_id: str) -> bool:
        if self.streams:
            return stream_id in self.streams
        if self.shard is not None:
            k, n = self.shard
            return stream_bucket(stream_id) % n == k
        return True

    def describe(self) -> str:
        if self.streams:
            return f"streams {', '.join(self.streams)}"
        if self.shard is not None:
            return f"shard {self.shard[0]}/{self.shard[1]}"
        return "every stream"

    def as_dict(self) -> dict:
        if self.streams:
            return {"streams": list(self.streams)}
        if self.shard is not None:
            return {"shard": f"{self.shard[0]}/{self.shard[1]}"}
        return {"all": True}


def parse_shard(spec: str) -> tuple[int, int]:
    """'K/N' with N in 1..256 and K in 0..N-1."""
    k, sep, n = spec.strip().partition("/")
    if not sep or not k.strip().isdigit() or not n.strip().isdigit():
        raise EdgepipeError(f"--shard {spec}: a shard is K/N, e.g. 2/8 (this monitor takes the streams whose "
                            "bucket % N == K)")
    k_, n_ = int(k), int(n)
    if not 1 <= n_ <= BUCKETS:
        raise EdgepipeError(f"--shard {spec}: N must be 1..{BUCKETS} (there are {BUCKETS} buckets), got {n_}")
    if not 0 <= k_ < n_:
        raise EdgepipeError(f"--shard {spec}: K must be 0..{n_ - 1} for N = {n_}, got {k_}")
    return k_, n_


def parse_streams(spec: str) -> tuple[str, ...]:
    """'cam1,cam3' -> ('cam1', 'cam3'): each 1..255 bytes of UTF-8, given once."""
    names = [s.strip() for s in spec.split(",")]
    if not all(names):
        raise EdgepipeError(f"--streams {spec!r}: a comma-separated list of stream ids, e.g. cam1,cam3 "
                            "(an empty name is not one)")
    for name in names:
        if len(name.encode()) > 255:
            raise EdgepipeError(f"--streams: stream id {name[:40]!r}... is over 255 bytes of UTF-8")
    return tuple(dict.fromkeys(names))


def selection(streams: str | None, shard: str | None) -> StreamSelection:
    """The monitor's --streams / --shard as a selection; both at once is one line."""
    if streams and shard:
        raise EdgepipeError("--streams and --shard are exclusive: name the streams, or take a shard of them")
    if streams:
        return StreamSelection(streams=parse_streams(streams))
    if shard:
        return StreamSelection(shard=parse_shard(shard))
    return StreamSelection()
