"""Drift statistics on count vectors, with SciPy as the oracle where it has the same function."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

from sidecar.monitoring import drift
from sidecar.monitoring.stats import chi2_isf, chi2_sf, kolmogorov_isf, kolmogorov_sf


@pytest.mark.parametrize("df", [1, 2, 3, 9, 11, 30, 200])
def test_chi2_functions_match_scipy(df):
    for x in (1e-3, 0.5, 1.0, 4.0, 9.5, 21.0, 60.0, 300.0):
        assert chi2_sf(x, df) == pytest.approx(sps.chi2.sf(x, df), rel=1e-9, abs=1e-300)
    for alpha in (0.5, 0.15, 0.05, 0.01, 0.001):
        assert chi2_isf(alpha, df) == pytest.approx(sps.chi2.isf(alpha, df), rel=1e-9)


def test_kolmogorov_functions_match_scipy():
    for t in (0.05, 0.3, 0.8, 0.999, 1.0, 1.36, 2.0, 3.5):
        assert kolmogorov_sf(t) == pytest.approx(sps.kstwobign.sf(t), rel=1e-9, abs=1e-15)
    for alpha in (0.15, 0.05, 0.01):
        assert kolmogorov_isf(alpha) == pytest.approx(sps.kstwobign.isf(alpha), rel=1e-9)


def test_psi_definition_and_epsilon():
    ref = np.array([50, 30, 20, 0])
    cur = np.array([25, 25, 25, 25])
    q = np.array([0.5, 0.3, 0.2, drift.PSI_EPSILON])  # the empty reference bin becomes 1e-4
    p = np.array([0.25, 0.25, 0.25, 0.25])
    assert drift.psi(ref, cur) == pytest.approx(float(np.sum((p - q) * np.log(p / q))), rel=1e-12)
    # A bin empty on both sides contributes nothing.
    assert drift.psi([10, 0, 10], [5, 0, 5]) == pytest.approx(0.0, abs=1e-15)
    assert drift.psi([10, 10], [10, 10]) == 0.0
    assert math.isnan(drift.psi([0, 0], [1, 2]))
    # PSI is symmetric in its two arguments (Jeffreys divergence) when no bin is empty.
    assert drift.psi([1, 2, 3], [3, 2, 1]) == pytest.approx(drift.psi([3, 2, 1], [1, 2, 3]))


def test_js_distance_matches_scipy_base2():
    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.integers(0, 50, 12), rng.integers(0, 50, 12)
        a[0] += 1
        b[0] += 1
        assert drift.js_distance(a, b) == pytest.approx(jensenshannon(a / a.sum(), b / b.sum(), base=2), abs=1e-12)
    assert drift.js_distance([1, 0], [0, 1]) == pytest.approx(1.0)


def test_ks_binned_equals_exact_ks_when_bins_separate_every_value():
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 10, 300), rng.integers(0, 12, 200)
    ref = np.bincount(x, minlength=12)
    cur = np.bincount(y, minlength=12)
    assert drift.ks_binned(ref, cur) == pytest.approx(sps.ks_2samp(x, y).statistic, abs=1e-12)


def test_ks_binned_never_exceeds_exact_ks():
    rng = np.random.default_rng(3)
    x, y = rng.normal(0, 1, 500), rng.normal(0.3, 1.2, 400)
    edges = np.quantile(x, np.linspace(0, 1, 11))
    ref = np.histogram(x, edges)[0]
    cur = np.concatenate([[np.sum(y < edges[0])], np.histogram(y, edges)[0], [np.sum(y > edges[-1])]])
    ref = np.concatenate([[0], ref, [0]])
    assert drift.ks_binned(ref, cur) <= sps.ks_2samp(x, y).statistic + 1e-12


def test_chi2_two_sample_matches_contingency_test():
    ref = np.array([120, 80, 30, 0, 5])
    cur = np.array([40, 50, 12, 0, 9])
    stat, df = drift.chi2_two_sample(ref, cur)
    table = np.array([ref, cur])[:, [0, 1, 2, 4]]
    expected = sps.chi2_contingency(table, correction=False)
    assert stat == pytest.approx(expected.statistic, rel=1e-12)
    assert df == expected.dof == 3


def test_sample_size_aware_threshold_follows_chi_square():
    # Under no drift, PSI / (1/n + 1/m) is ~ chi-square(B - 1): the floor is its alpha quantile.
    n, m, bins = 10_000, 200, 10
    floor = drift.psi_critical(n, m, bins - 1, 0.01)
    assert floor == pytest.approx(sps.chi2.isf(0.01, bins - 1) * (1 / n + 1 / m))
    # Simulate windows of m rows drawn from the reference distribution itself: the floor holds ~99%.
    rng = np.random.default_rng(4)
    q = np.full(bins, 1 / bins)
    ref = (q * n).astype(int)
    psis = np.array([drift.psi(ref, rng.multinomial(m, q)) for _ in range(2000)])
    assert 0.97 < np.mean(psis < floor) <= 1.0
    # ...while the fixed 0.1 band would flag many of these windows of no drift at all.
    assert np.mean(psis >= 0.1) > 0.02
    js = np.array([drift.js_distance(ref, rng.multinomial(m, q)) for _ in range(2000)])
    assert 0.97 < np.mean(js < drift.js_critical(n, m, bins - 1, 0.01)) <= 1.0


def test_compare_small_windows_raise_thresholds_large_windows_use_bands():
    t = drift.Thresholds()
    ref = np.array([0] + [1000] * 10 + [0])
    small = np.array([0] + [6] * 10 + [0])
    large = np.array([0] + [10_000] * 10 + [0])
    psi_small = drift.compare("numeric", ref, small, t)[0]
    psi_large = drift.compare("numeric", ref, large, t)[0]
    assert psi_small.alert > t.psi_alert  # 60 rows: the chance PSI floor is above 0.25
    assert psi_large.warn == t.psi_warn and psi_large.alert == t.psi_alert
    assert psi_large.status == drift.OK
    tiny = drift.compare("numeric", ref, np.array([0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]), t)
    assert all(s.status == drift.INSUFFICIENT for s in tiny)


def test_compare_flags_a_shift():
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, 20_000)
    edges = np.quantile(x, np.linspace(0, 1, 11))

    def counts(v):
        inner = np.histogram(np.clip(v, edges[0], edges[-1]), edges)[0]
        inner[0] -= np.sum(v < edges[0])
        inner[-1] -= np.sum(v > edges[-1])
        return np.concatenate([[np.sum(v < edges[0])], inner, [np.sum(v > edges[-1])]])

    t = drift.Thresholds()
    same = {s.name: s for s in drift.compare("numeric", counts(x), counts(rng.normal(0, 1, 1000)), t)}
    shifted = {s.name: s for s in drift.compare("numeric", counts(x), counts(rng.normal(1.5, 1, 1000)), t)}
    assert same["psi"].status == drift.OK and same["ks"].status == drift.OK
    assert shifted["psi"].status == drift.ALERT and shifted["psi"].value > 0.25
    assert shifted["ks"].status == drift.ALERT and shifted["ks"].p_value < 0.05
    assert shifted["js"].status == drift.ALERT


def test_categorical_compare_uses_chi_square():
    t = drift.Thresholds()
    ref = np.array([500, 300, 200, 0])
    same = {s.name: s for s in drift.compare("categorical", ref, np.array([250, 150, 100, 0]), t)}
    moved = {s.name: s for s in drift.compare("categorical", ref, np.array([100, 150, 250, 0]), t)}
    assert "ks" not in same and same["chi2"].status == drift.OK and same["chi2"].p_value > 0.5
    assert moved["chi2"].status == drift.ALERT and moved["chi2"].p_value < 1e-6
    assert moved["chi2"].alert == pytest.approx(sps.chi2.isf(0.05, 2))
