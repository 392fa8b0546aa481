"""capture --reference-view: by default a reference shows the recognizer's default view (the frame's centre square
at 224), so a wide frame's reference costs a 224 still's bytes; `native` sends the whole frame. The monitor pairs
and classifies either (its centre-crop of a 224 square is the square itself)."""
from __future__ import annotations

import numpy as np
import pytest

from edgepipe.edge.capture import CaptureLoop, CaptureSettings
from edgepipe.media.codecs import decode_image
from edgepipe.recognition import centre_crop
from edgepipe.server.monitor import Monitor
from edgepipe.transport.protocol import parse_message
from edgepipe.transport.sockets import free_tcp_endpoint

from field_helpers import capture_messages

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")


def capture(clip, view: str) -> list[list[bytes]]:
    endpoint = free_tcp_endpoint()
    settings = CaptureSettings(source=str(clip), publish=endpoint, frames=4, size=(640, 360), wait_subscriber_s=10,
                               stream_id="v", reference_every=2, reference_view=view,
                               reference_share=0)
    return capture_messages(CaptureLoop(settings), endpoint)


def references(messages) -> list[tuple]:
    return [parse_message(m) for m in messages if parse_message(m)[0].reference]


def test_a_reference_shows_the_centre_square_at_224_by_default_and_the_whole_frame_when_native(video_clip):
    cropped, native = capture(video_clip, "centre-crop"), capture(video_clip, "native")
    small, whole = references(cropped), references(native)
    assert len(small) == len(whole) == 2  # seq 0 and 2
    assert all((h.width, h.height) == (224, 224) for h, _ in small)
    assert all((h.width, h.height) == (640, 360) for h, _ in whole)
    for (h_small, p_small), (h_whole, p_whole) in zip(small, whole):
        assert h_small.seq == h_whole.seq
        assert len(p_small) < len(p_whole) / 2  # a fraction of the whole frame's bytes
        # the same picture the monitor's default view makes of the whole reference (q95 both ways)
        ours, theirs = decode_image("jpeg", p_small), centre_crop(decode_image("jpeg", p_whole), 224)
        assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 3
    for messages in (cropped, native):  # the monitor takes either: every reference decoded, none refused
        monitor = Monitor(None)
        for m in messages:
            monitor.handle(m)
        refs = monitor.report()["references"]
        assert (refs["received"], refs["decoded"], refs["undecodable"], refs["without_frame"]) == (2, 2, 0, 0)
