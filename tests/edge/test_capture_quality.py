"""The capture sends the codec's setting whole (wire version 5): a JPEG 2000 rate x1000 of 200 reaches the
monitor as 200; version 4's i8 field made it 127 (issue 10)."""
from __future__ import annotations

import pytest

from edgepipe.edge.capture import CaptureLoop, CaptureSettings
from edgepipe.server.monitor import Monitor
from edgepipe.transport.protocol import WIRE_VERSION, parse_message
from edgepipe.transport.sockets import free_tcp_endpoint

from field_helpers import capture_messages

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")


@pytest.mark.parametrize("codec, qp", [("jpeg2000", 200), ("jpeg2000", 1000), ("jpeg", 90)])
def test_the_capture_sends_the_codecs_setting_and_the_monitor_rows_it(small_val_folder, codec, qp):
    endpoint = free_tcp_endpoint()
    settings = CaptureSettings(source=f"folder:{small_val_folder}", publish=endpoint, codec=codec, qp=qp,
                               frames=3, size=(64, 64), wait_subscriber_s=10, stream_id="q")
    messages = capture_messages(CaptureLoop(settings), endpoint)
    assert len(messages) == 4 and all(m[0][2] == WIRE_VERSION for m in messages)
    assert [parse_message(m)[0].qp for m in messages] == [qp] * 4
    monitor = Monitor(None)
    for m in messages:
        monitor.handle(m)
    (row,) = monitor.report()["rows"]
    assert (row["codec"], row["qp"], row["frames"]) == (codec, qp, 3)
