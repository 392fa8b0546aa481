"""BD-rate / BD-PSNR against published reference values of the classic (PSNR) calculation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from edgepipe.core.bdrate import SMALL_OVERLAP_IOU, bd_quality, bd_rate, compare


def _split(points):
    rate, q = zip(*points)
    return list(rate), list(q)


# VCEG-M33 (Bjøntegaard 2001) example curves, with the values the VCEG-M33 Excel method gives
# (BD-PSNR 0.800713 dB, BD-rate -13.261773 %), as asserted in tbr/bjontegaard_cpp example.cpp
# ("VCEG-M33 numbers"; port of the ETRO VBA sheet that "complies with VCEG-M33 with 4 points").
M33_A = [(90.33, 27.95), (181.03, 31.17), (332.99, 34.44), (547.79, 38.11)]
M33_B = [(127.1719, 29.9286), (186.14, 32.4165), (307.2924, 34.7013), (481.5588, 37.4561)]

# ETRO barb512 curves (9 points: cubic least squares), same source: 0.072297 dB, -0.903450 %.
ETRO_A = [(2.99899, 48.6681), (1.99884, 43.8357), (1.49673, 41.3982), (0.99707, 38.0124), (0.745941, 35.5122),
          (0.596436, 33.8673), (0.495148, 32.6658), (0.29425, 29.4505), (0.244049, 28.484)]
ETRO_B = [(2.997253, 48.5637), (1.968292, 43.7318), (1.472565, 41.2727), (0.994965, 38.0001), (0.748871, 35.6375),
          (0.58902, 33.9057), (0.499176, 32.8318), (0.296753, 29.6851), (0.249634, 28.8244)]

# JCTVC-E137 data with the JCT-VC (PCHIP, Excel bdrint) BD-rates, as asserted in Netflix/vmaf
# python/test/bd_rate_calculator_test.py (BDrateCalculatorJCTVCTest; values there are fractions).
E137 = [
    ([(108048.8736, 43.6471), (61279.976, 40.3953), (33905.6656, 37.247), (18883.6928, 34.2911)],
     [(108061.2784, 43.6768), (61299.9936, 40.4232), (33928.7472, 37.2761), (18910.912, 34.3147)],
     -0.00465215420752807),
    ([(40433.8848, 37.5761), (7622.7456, 35.3756), (2394.488, 33.8977), (1017.6184, 32.0603)],
     [(40370.12, 37.5982), (7587.0024, 35.4025), (2390.0944, 33.9194), (1017.0984, 32.0822)],
     -0.018779823450567612),
]


def test_cubic_matches_vceg_m33_example():
    ra, qa = _split(M33_A)
    rb, qb = _split(M33_B)
    assert bd_quality(ra, qa, rb, qb, "cubic") == pytest.approx(0.800713, abs=1e-6)
    assert bd_rate(ra, qa, rb, qb, "cubic") == pytest.approx(-13.261773, abs=1e-6)


def test_cubic_least_squares_matches_etro_nine_points():
    ra, qa = _split(ETRO_A)
    rb, qb = _split(ETRO_B)
    assert bd_quality(ra, qa, rb, qb, "cubic") == pytest.approx(0.072297, abs=1e-6)
    assert bd_rate(ra, qa, rb, qb, "cubic") == pytest.approx(-0.903450, abs=1e-6)


@pytest.mark.parametrize("anchor,test,expected", E137)
def test_pchip_matches_jctvc_e137(anchor, test, expected):
    ra, qa = _split(anchor)
    rb, qb = _split(test)
    assert bd_rate(ra, qa, rb, qb, "pchip") == pytest.approx(100 * expected, abs=1e-9)


def test_input_order_does_not_matter():
    ra, qa = _split(M33_A)
    rb, qb = _split(M33_B)
    for m in ("cubic", "pchip"):
        assert bd_rate(ra[::-1], qa[::-1], rb, qb, m) == pytest.approx(bd_rate(ra, qa, rb, qb, m), abs=1e-12)


@pytest.mark.parametrize("method", ["cubic", "pchip"])
def test_uniform_rate_scaling_is_recovered_exactly(method):
    # Same qualities at 90 % of the rate: every method must say exactly -10 %.
    ra, qa = _split(M33_A)
    assert bd_rate(ra, qa, [0.9 * r for r in ra], qa, method) == pytest.approx(-10.0, abs=1e-9)
    assert bd_rate(ra, qa, ra, qa, method) == pytest.approx(0.0, abs=1e-12)
    # and a constant +1 quality shift at equal rates is BD-quality +1
    assert bd_quality(ra, qa, ra, [q + 1 for q in qa], method) == pytest.approx(1.0, abs=1e-9)


def test_disjoint_ranges_give_nan_and_a_note():
    c = compare([0.2, 0.4, 0.6, 0.8], [10, 20, 30, 40], [0.2, 0.4, 0.6, 0.8], [50, 60, 70, 80])
    assert math.isnan(c.rate_cubic) and math.isnan(c.rate_pchip)
    assert c.overlap_iou == 0 and c.small_overlap
    assert any("do not overlap" in n for n in c.notes)


def test_small_overlap_is_flagged_and_large_is_not():
    rate = [0.2, 0.4, 0.6, 0.8]
    shifted = compare(rate, [40, 50, 60, 70], rate, [60, 66, 72, 78])  # shares 60-70 of 40-78
    assert shifted.overlap_lo == 60 and shifted.overlap_hi == 70
    assert shifted.overlap_iou == pytest.approx(10 / 38)
    assert shifted.overlap_iou < SMALL_OVERLAP_IOU and shifted.small_overlap
    close = compare(rate, [40, 50, 60, 70], rate, [41, 51, 61, 71])
    assert not close.small_overlap and close.rate_cubic < 0 and close.rate_pchip < 0


def test_ties_make_pchip_undefined_not_wrong():
    c = compare([0.2, 0.4, 0.6, 0.8], [50, 60, 60, 70], [0.2, 0.4, 0.6, 0.8], [52, 61, 63, 71])
    assert math.isnan(c.rate_pchip) and math.isfinite(c.rate_cubic)
    assert any("tied" in n for n in c.notes) and any("not strictly increasing" in n for n in c.notes)


def test_a_cubic_fit_that_runs_away_is_undefined_not_a_crash():
    # Two test qualities 1e-5 apart (a measure flat at high rate, as on the car clip): the cubic through them
    # swings so far that the mean log-rate difference is ~4600, past any float percentage.
    rate_a, q_a = [0.0108, 0.0147, 0.0276, 0.0589], [-0.657, -0.444, -0.135, -0.095]
    rate_t, q_t = [0.0132, 0.0179, 0.0365, 0.0884], [-0.866, -0.739, -0.301, -0.30101]
    assert math.isnan(bd_rate(rate_a, q_a, rate_t, q_t, "cubic"))
    c = compare(rate_a, q_a, rate_t, q_t)
    assert math.isnan(c.rate_cubic) and math.isfinite(c.rate_pchip)
    assert any("cubic fit runs away" in n for n in c.notes) and not any("tied" in n for n in c.notes)


def test_cubic_and_pchip_can_disagree_in_sign_on_saturating_accuracy():
    # Accuracy saturates at high rate; the test curve starts higher. The cubic's wiggle over the
    # flat part and PCHIP's monotone fit read the shared range differently (the warning).
    anchor_r, anchor_q = [0.15, 0.3, 0.6, 1.0], [40.0, 62.0, 70.0, 71.0]
    test_r, test_q = [0.14, 0.27, 0.55, 0.95], [55.0, 66.0, 70.2, 70.4]
    c = compare(anchor_r, anchor_q, test_r, test_q)
    assert np.sign(c.rate_cubic) != np.sign(c.rate_pchip)


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        bd_rate([1, 2, 3], [1, 2], [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError):
        bd_rate([0, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError):
        bd_rate([1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3], method="akima")


def test_numpy_pchip_is_scipys():
    """core/bdrate.py integrates PCHIP in numpy (a monitor has no SciPy): the same integral as SciPy's
    PchipInterpolator on random monotone and non-monotone curves, over sub-ranges that cut intervals."""
    scipy_interpolate = pytest.importorskip("scipy.interpolate")
    from edgepipe.core.bdrate import _pchip_integral

    rng = np.random.default_rng(7)
    for n in (2, 3, 4, 5, 9):
        for monotone in (True, False):
            x = np.sort(rng.uniform(0, 100, n))
            x[1:] += np.arange(1, n) * 1e-3  # strictly increasing
            y = np.cumsum(rng.uniform(0.1, 2, n)) if monotone else rng.normal(0, 3, n)
            lo, hi = np.sort(rng.uniform(x[0], x[-1], 2))
            for a, b in ((x[0], x[-1]), (lo, hi)):
                want = scipy_interpolate.PchipInterpolator(x, y).integrate(a, b)
                assert _pchip_integral(x, y, a, b) == pytest.approx(want, rel=1e-10, abs=1e-10)


def test_paired_bootstrap_brackets_a_known_saving_and_refuses_a_mostly_undefined_one():
    """Per-sample rates and qualities at four settings; the test curve takes 0.7 x the anchor's rate at the same
    quality: BD-rate -30 %. Curves whose quality ranges do not overlap give no interval."""
    from edgepipe.core.bdrate import paired_bootstrap

    rng = np.random.default_rng(1)
    n = 200
    rates = np.array([0.2, 0.4, 0.8, 1.6])[:, None] * rng.uniform(0.5, 1.5, (1, n))
    quality = np.array([40.0, 55.0, 65.0, 72.0])[:, None] + rng.normal(0, 5, (4, n))

    def curve(r, q):
        return lambda idx: (list(r[:, idx].mean(axis=1)), list(q[:, idx].mean(axis=1)))

    ci = paired_bootstrap(curve(rates, quality), curve(0.7 * rates, quality), n, n_boot=100)
    # Paired: every resample draws the same samples for both curves, so each one sees exactly -30 %; two
    # separate draws would scatter it by the samples' spread.
    assert ci == {"cubic": [pytest.approx(-30.0), pytest.approx(-30.0)],
                  "pchip": [pytest.approx(-30.0), pytest.approx(-30.0)]}
    noisy = paired_bootstrap(curve(rates, quality), curve(0.7 * rates, quality + rng.normal(0, 8, (4, n))), n)
    for lo, hi in noisy.values():
        assert lo < -30.0 < hi and hi - lo > 1.0
    apart = paired_bootstrap(curve(rates, quality), curve(rates, quality + 100.0), n, n_boot=50)
    assert apart == {"cubic": None, "pchip": None}
