"""capture --reference-budget (issue 14 item 1): references are skipped, and counted, whenever their running
kbit/s on the stream clock would pass the budget; the stream itself is untouched."""
from __future__ import annotations

from edgepipe.edge.capture import CaptureLoop, CaptureSettings
from edgepipe.edge.references import ReferencePolicy
from edgepipe.transport.sockets import free_tcp_endpoint


def run(folder, **refs):
    settings = CaptureSettings(source=f"folder:{folder}", publish=free_tcp_endpoint(), wait_subscriber_s=0,
                               size=(224, 224), gop=4, **refs)
    loop = CaptureLoop(settings)
    try:
        return loop.run().as_dict()
    finally:
        loop.close()


def test_the_budget_holds_the_reference_rate_and_counts_what_it_skips(small_val_folder):
    free = run(small_val_folder, reference_every=1, reference_share=0)
    capped = run(small_val_folder, reference_every=1, reference_budget_kbit=2000.0, reference_share=0)
    plain = run(small_val_folder)
    assert free["references"]["sent"] == 12 and free["references"]["skipped"] == {}
    refs = capped["references"]
    assert refs["sent"] >= 1 and refs["skipped"]["over_budget"] >= 1
    assert refs["sent"] + refs["skipped"]["over_budget"] == 12
    assert refs["kbit_s"] <= 2000.0 < free["references"]["kbit_s"]
    for key in ("frames_sent", "bytes_sent", "kbit_s", "stream_s"):  # the stream is the same in all three
        assert plain[key] == free[key] == capped[key], key
    assert "references" not in plain


def test_over_budget_is_a_running_rate_on_the_stream_clock():
    policy = ReferencePolicy(5, budget_kbit=100.0)
    assert not policy.over_budget(0, 12_500, 1.0)  # 100 kbit in 1 s: at the budget
    assert policy.over_budget(0, 12_501, 1.0)
    assert policy.over_budget(0, 1, 0.0)  # no stream time yet: nothing fits
    assert not ReferencePolicy(5).over_budget(10**9, 10**9, 0.0)  # no budget
    assert policy.due(0) and policy.due(10) and not policy.due(3) and not ReferencePolicy(0).due(0)


def test_by_default_references_cost_at_most_five_percent_of_the_stream(small_val_folder):
    """The default share: whatever N, the references' bytes stay within 5 % of the stream's (issue 14's target),
    and every reference not sent is counted over_share."""
    capped = run(small_val_folder, reference_every=1)
    free = run(small_val_folder, reference_every=1, reference_share=0)
    refs = capped["references"]
    assert refs["bytes"] <= 0.05 * capped["bytes_sent"]
    assert refs["sent"] + refs["skipped"]["over_share"] == 12
    assert free["references"]["share_of_stream_bytes"] > 0.05  # without the cap they would cost more
    looser = run(small_val_folder, reference_every=1, reference_share=0.5)["references"]
    assert looser["sent"] > refs["sent"] and looser["bytes"] <= 0.5 * capped["bytes_sent"]


def test_over_share_counts_the_coded_frame_it_follows():
    policy = ReferencePolicy(1, share=0.05)
    assert not policy.over_share(0, 50, 1000)  # 50 of 1,000: at the share
    assert policy.over_share(0, 51, 1000)
    assert not ReferencePolicy(1).over_share(10**9, 10**9, 0)  # share 0: no cap


def test_a_skipped_reference_is_judged_at_the_last_ones_size_before_any_encode(small_val_folder, monkeypatch):
    """Under the default 5 % most due references are skipped; each skip that the previous reference's size
    already decides costs no JPEG encode."""
    encodes = []
    real = ReferencePolicy.encode
    monkeypatch.setattr(ReferencePolicy, "encode", staticmethod(lambda image: encodes.append(1) or real(image)))
    refs = run(small_val_folder, reference_every=1)["references"]
    assert refs["sent"] + refs["skipped"]["over_share"] == 12
    assert refs["sent"] <= len(encodes) < 12  # every sent one was encoded; the clear skips were not
