"""Alert hysteresis: raised after K windows at or above the threshold, cleared after K below."""

from __future__ import annotations

from sidecar.monitoring.alerts import CLEARED, RAISED, AlertTracker
from sidecar.monitoring.drift import ALERT, INSUFFICIENT, OK, WARN, StatisticValue


def psi(value: float, status: str) -> StatisticValue:
    return StatisticValue("psi", value, 0.1, 0.25, status)


def tracker(raise_after: int = 3, clear_after: int = 2) -> AlertTracker:
    return AlertTracker("m", "1.0.0", "count", raise_after, clear_after, frozenset({"psi", "missing_rate"}))


def test_raised_only_after_k_consecutive_windows():
    t = tracker()
    assert t.update([("f", psi(0.3, ALERT))]) == []
    assert t.update([("f", psi(0.4, ALERT))]) == []
    events = t.update([("f", psi(0.5, ALERT))], now_unix=123.0)
    assert [e.kind for e in events] == [RAISED]
    alert = events[0].alert
    assert (alert.model, alert.version, alert.feature, alert.statistic) == ("m", "1.0.0", "f", "psi")
    assert alert.value == 0.5 and alert.threshold == 0.25 and alert.windows == 3 and alert.raised_unix == 123.0
    assert "feature 'f'" in alert.describe() and "psi" in alert.describe()
    assert t.active == (alert,)
    # Still above: no new event, the value follows the latest window.
    assert t.update([("f", psi(0.6, ALERT))]) == []
    assert t.active[0].value == 0.6 and t.active[0].raised_unix == 123.0


def test_a_window_below_breaks_the_streak():
    t = tracker()
    t.update([("f", psi(0.3, ALERT))])
    t.update([("f", psi(0.3, ALERT))])
    t.update([("f", psi(0.15, WARN))])
    assert t.update([("f", psi(0.3, ALERT))]) == []
    assert t.update([("f", psi(0.3, ALERT))]) == []
    assert [e.kind for e in t.update([("f", psi(0.3, ALERT))])] == [RAISED]


def test_cleared_after_k_windows_below_and_insufficient_windows_are_neutral():
    t = tracker(raise_after=1, clear_after=2)
    t.update([("f", psi(0.3, ALERT))])
    assert len(t.active) == 1
    assert t.update([("f", psi(0.01, OK))]) == []
    assert t.update([("f", psi(float("nan"), INSUFFICIENT))]) == []
    assert len(t.active) == 1
    events = t.update([("f", psi(0.02, OK))])
    assert [e.kind for e in events] == [CLEARED] and events[0].alert.value == 0.02
    assert t.active == ()


def test_only_configured_statistics_alert_and_features_are_independent():
    t = tracker(raise_after=1)
    events = t.update(
        [
            ("a", psi(0.3, ALERT)),
            ("b", StatisticValue("ks", 0.5, 0.1, 0.2, ALERT)),
            ("c", StatisticValue("missing_rate", 0.2, 0.005, 0.01, ALERT)),
        ]
    )
    assert sorted((e.alert.feature, e.alert.statistic) for e in events) == [("a", "psi"), ("c", "missing_rate")]
