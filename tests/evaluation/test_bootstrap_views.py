"""The evaluation's bootstrap draws photos, each with all its views (edgepipe holdout --washed A,B,...)."""
from __future__ import annotations

import numpy as np

from edgepipe.core.datasets import source_of
from edgepipe.evaluation.report import _photo_draw


def test_one_image_per_photo_draws_exactly_as_before():
    ok = np.array([True, True, False, True, True])
    sources = [f"n0/img{i}" for i in range(5)]
    for given in (None, sources):
        a, b = np.random.default_rng(3), np.random.default_rng(3)
        expected = b.choice(np.flatnonzero(ok), size=4, replace=True)
        np.testing.assert_array_equal(_photo_draw(ok, given)(a), expected)


def test_views_of_a_photo_are_drawn_together_and_unreadable_ones_never():
    names = [f"n01440764/img{p}@{size}.png" for p in range(6) for size in (144, 160, 176)]
    sources = [source_of(n) for n in names]
    assert len(set(sources)) == 6 and sources[0] == "n01440764/img0"
    ok = np.ones(len(names), bool)
    ok[4] = False  # one unreadable view of photo 1
    draw = _photo_draw(ok, sources)
    rng = np.random.default_rng(0)
    seen_photos = set()
    for _ in range(50):
        idx = draw(rng)
        assert 4 not in idx
        photos = [sources[i] for i in idx]
        counts = {p: photos.count(p) for p in set(photos)}
        for p, n in counts.items():  # every draw of a photo brings all its readable views
            assert n % (2 if p == "n01440764/img1" else 3) == 0
        assert sum(n // (2 if p == "n01440764/img1" else 3) for p, n in counts.items()) == 6  # six photos a resample
        seen_photos |= set(photos)
    assert len(seen_photos) == 6


def test_only_a_number_after_the_mark_makes_a_view():
    assert source_of("n01440764/img3@160.png") == "n01440764/img3"
    assert source_of("n01440764/photo@home.jpg") == "n01440764/photo@home"
    assert source_of("n01440764/@160.png") == "n01440764/@160"
