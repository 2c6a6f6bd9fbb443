"""Drift and data-quality metrics, read from the monitoring stage's frozen snapshot at collection time.

Source: ``sidecar.monitoring.monitor.Monitoring.snapshot()`` (a ``MonitoringSnapshot``: per version,
per feature the cumulative bin counts, the last closed alert window's statistics, active alerts).
Nothing here touches the request path or the monitoring thread's state; one snapshot serves all the
instruments of one collection (it is reused for ``CACHE_S``).

- ``sidecar.feature.bin.count``: cumulative observations per bin: counters, so a collector can sum them
  across replicas and compute the fleet's PSI against the reference shares
  (``sidecar.feature.bin.reference``).
- ``sidecar.drift.psi`` / ``sidecar.drift.statistic``: the statistics of the last closed window of the
  alert window kind (the values alerts are judged on); absent until a window closed with enough data.
- ``sidecar.data_quality.issues``: cumulative counts of missing, non-finite, out-of-range values, unknown
  categories, and requests rejected for their inputs (``feature="*"``).
- ``sidecar.alerts.active``: alerts firing per version (0 when none); ``sidecar.drift.alert``: 1 per
  firing (feature, statistic).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from sidecar.telemetry import catalog
from sidecar.telemetry.histograms import HistogramSet

CACHE_S = 0.5
_SERIES_LIMIT = 65_536  # attribute mappings kept (per version, feature and bin or statistic)
_NO_VALUE = ("insufficient_data", "no_reference")


class DriftMetrics:
    def __init__(self, hists: HistogramSet, snapshot: Callable[[], Any]) -> None:
        self._take = snapshot
        self._lock = threading.Lock()
        self._cached: tuple[float, Any] | None = None
        # Each series' attributes, the same mapping from one collection to the next: the OTLP encoder
        # then encodes them once per series (sidecar.telemetry.otlp_metrics._AttributeBlocks).
        self._attributes: dict[tuple[str, ...], dict[str, str]] = {}
        self._bin_attributes: dict[tuple[Any, ...], tuple[dict[str, str], ...]] = {}  # per feature: its bins'
        # Hundreds of points per model version (per feature and bin): the lean observable path
        # (``HistogramSet.observe``), not the SDK's (~10 us per point at every collection).
        hists.observe(catalog.FEATURE_BIN_COUNT, self._bins)
        hists.observe(catalog.FEATURE_BIN_REFERENCE, self._reference)
        hists.observe(catalog.DRIFT_PSI, self._psi)
        hists.observe(catalog.DRIFT_STATISTIC, self._statistics)
        hists.observe(catalog.DATA_QUALITY, self._quality)
        hists.observe(catalog.ALERTS_ACTIVE, self._alerts)
        hists.observe(catalog.DRIFT_ALERT, self._alert_states)

    def snapshot(self) -> Any:
        now = time.monotonic()
        with self._lock:
            if self._cached is not None and now - self._cached[0] < CACHE_S:
                return self._cached[1]
        snap = self._take()
        with self._lock:
            self._cached = (now, snap)
        return snap

    def _versions(self) -> Iterable[tuple[dict[str, str], Any]]:
        for v in self.snapshot().versions:
            yield self._series({"model.name": v.model, "model.version": v.version}), v

    def _series(self, attributes: dict[str, str], **extra: str) -> dict[str, str]:
        """``{**attributes, **extra}``, the same mapping every time it is asked for (bounded)."""
        key = (*attributes.values(), *extra.keys(), *extra.values())
        found = self._attributes.get(key)
        if found is None:
            if len(self._attributes) >= _SERIES_LIMIT:
                self._attributes.clear()
                self._bin_attributes.clear()
            found = self._attributes[key] = {**attributes, **extra}
        return found

    def _bin_series(self, attributes: dict[str, str], f: Any) -> tuple[dict[str, str], ...]:
        """``_series(attributes, feature=..., bin=label)`` for each of ``f``'s bins, in one lookup."""
        key = (*attributes.values(), f.feature, f.bins)
        found = self._bin_attributes.get(key)
        if found is None:
            found = tuple(self._series(attributes, feature=f.feature, bin=label) for label in f.bins)
            self._bin_attributes[key] = found
        return found

    def _bins(self) -> Iterable[tuple[Any, dict[str, str]]]:
        for attrs, v in self._versions():
            for f in v.features:
                yield from zip(f.cumulative, self._bin_series(attrs, f), strict=True)

    def _reference(self) -> Iterable[tuple[Any, dict[str, str]]]:
        for attrs, v in self._versions():
            if not v.has_reference:
                continue
            for f in v.features:
                total = sum(f.reference)
                if total:
                    for count, series in zip(f.reference, self._bin_series(attrs, f), strict=True):
                        yield count / total, series

    def _window_statistics(self) -> Iterable[tuple[dict[str, str], str, Any]]:
        for attrs, v in self._versions():
            window = v.last_window
            if window is None:
                continue
            for f in window.features:
                for s in f.statistics:
                    if s.status not in _NO_VALUE and s.value == s.value:  # NaN: no value
                        yield attrs, f.feature, s

    def _psi(self) -> Iterable[tuple[Any, dict[str, str]]]:
        for attrs, feature, s in self._window_statistics():
            if s.name == "psi":
                yield s.value, self._series(attrs, feature=feature)

    def _statistics(self) -> Iterable[tuple[Any, dict[str, str]]]:
        for attrs, feature, s in self._window_statistics():
            yield s.value, self._series(attrs, feature=feature, statistic=s.name)

    def _quality(self) -> Iterable[tuple[Any, dict[str, str]]]:
        for attrs, v in self._versions():
            yield v.schema_violations_total, self._series(attrs, feature="*", check="schema_violation")
            for f in v.features:
                for check, count in quality_counts(f, v.has_reference).items():
                    yield count, self._series(attrs, feature=f.feature, check=check)

    def _alerts(self) -> Iterable[tuple[Any, dict[str, str]]]:
        for attrs, v in self._versions():
            yield len(v.alerts), attrs

    def _alert_states(self) -> Iterable[tuple[Any, dict[str, str]]]:
        for attrs, v in self._versions():
            for a in v.alerts:
                yield 1, self._series(attrs, feature=a.feature, statistic=a.statistic)


def quality_counts(f: Any, has_reference: bool) -> dict[str, int]:
    """Data-quality counts of one feature from its cumulative bins.

    The layout is ``sidecar.monitoring.binning.FeatureSlot``'s: numeric = below-min, bins..., above-max,
    NaN, inf; categorical = categories..., other, missing.
    """
    c = f.cumulative
    if f.kind == "numeric":
        counts = {"missing": c[-2], "non_finite": c[-1]}
        if has_reference:  # the outer bins are below the reference min / above its max
            counts["out_of_range"] = c[0] + c[-3]
        return counts
    return {"missing": c[-1], "unknown_category": c[-2]}
