"""Shadow-versus-primary comparison and its windows."""

from __future__ import annotations

import math

import numpy as np

from sidecar.routing.comparison import ShadowStats, compare_outputs


def test_classifier_agreement_and_differences():
    primary = {"probabilities": np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32)}
    shadow = {"probabilities": np.array([[0.7, 0.3], [0.4, 0.6], [0.3, 0.7]], np.float32)}
    c = compare_outputs(primary, shadow)
    assert (c.class_rows, c.agree) == (3, 2)
    assert c.elements == 6
    assert math.isclose(c.abs_diff_sum, 0.2 * 4 + 0.3 * 2, rel_tol=1e-5)
    assert math.isclose(c.max_abs_diff, 0.3, rel_tol=1e-5)
    assert not c.mismatch


def test_integer_labels_count_as_classes_not_differences():
    primary = {"label": np.array([1, 2, 3]), "score": np.array([[1.0], [2.0], [3.0]])}
    shadow = {"label": np.array([1, 0, 3]), "score": np.array([[1.0], [2.5], [3.0]])}
    c = compare_outputs(primary, shadow)
    assert (c.class_rows, c.agree) == (3, 2)
    assert c.elements == 3 and math.isclose(c.max_abs_diff, 0.5)


def test_garbage_is_a_mismatch():
    primary = {"y": np.zeros((2, 3), np.float32)}
    assert compare_outputs(primary, {"y": np.zeros((3, 3), np.float32)}).mismatch
    assert compare_outputs(primary, {}).mismatch
    assert compare_outputs(primary, {"y": np.full((2, 3), np.nan, np.float32)}).mismatch


def test_windows_roll_and_total_accumulates(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("sidecar.routing.comparison.time.time", lambda: clock[0])
    stats = ShadowStats("m", "1.2.0", window_s=10, keep=3)
    p = {"y": np.array([[0.0, 1.0]], np.float32)}
    stats.record_mirrored()
    stats.record_result(p, {"y": np.array([[0.5, 1.0]], np.float32)}, 1_000_000, 3_000_000)
    stats.record_mirrored()
    stats.record_error(timeout=True)
    clock[0] += 11
    stats.record_dropped()
    windows = stats.windows()
    assert len(windows) == 2
    first, current = windows
    assert (first.mirrored, first.completed, first.timeouts) == (2, 1, 1)
    assert first.error_rate == 0.5
    assert math.isclose(first.mean_latency_diff_ms, 2.0)
    assert math.isclose(first.max_abs_diff, 0.5)
    assert first.agreement == 1.0  # [0.5, 1.0] keeps class 1
    assert current.dropped == 1 and current.mirrored == 0
    total = stats.total()
    assert (total.mirrored, total.dropped, total.completed) == (2, 1, 1)
