"""Shadow comparison metrics, read at collection time from each shadow's cumulative figures.

Source: the router's ``ShadowMirror`` (``all_stats()``: one ``ShadowStats`` per model and shadow
version, replaced, never mutated, when a policy changes). Each shadow's ``cumulative()`` figures are
only ever added to, so a collection on an exporter's thread reads them without a lock and counters
never go back. ``model.version`` is the shadow's version.

- ``sidecar.shadow.copies``: copies by outcome (mirrored, dropped, answered, error, timeout, mismatch);
- ``sidecar.shadow.rows``: rows compared, and for classifiers rows whose class was compared and agreed:
  counters, so a collector sums them across replicas and divides for the fleet's agreement;
- ``sidecar.shadow.agreement``, ``sidecar.shadow.output.difference`` (mean, max) and
  ``sidecar.shadow.latency.difference``: gauges since the shadow was configured, absent until there is
  something to show (no classifier output, no numeric output, no answer yet).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sidecar.telemetry import catalog
from sidecar.telemetry.histograms import HistogramSet


class ShadowMetrics:
    def __init__(self, hists: HistogramSet, mirror: Any) -> None:
        self._mirror = mirror
        hists.observe(catalog.SHADOW_COPIES, self._copies)
        hists.observe(catalog.SHADOW_ROWS, self._rows)
        hists.observe(catalog.SHADOW_AGREEMENT, self._agreement)
        hists.observe(catalog.SHADOW_OUTPUT_DIFFERENCE, self._difference)
        hists.observe(catalog.SHADOW_LATENCY_DIFFERENCE, self._latency)

    def _shadows(self) -> Iterable[tuple[dict[str, str], Any]]:
        for stats in self._mirror.all_stats():
            yield {"model.name": stats.model, "model.version": stats.version}, stats.cumulative()

    def _copies(self) -> Iterable[tuple[Any, dict[str, str]]]:
        for attrs, s in self._shadows():
            for outcome, count in (
                ("mirrored", s.mirrored),
                ("dropped", s.dropped),
                ("answered", s.completed),
                ("error", s.errors),
                ("timeout", s.timeouts),
                ("mismatch", s.mismatches),
            ):
                yield count, {**attrs, "outcome": outcome}

    def _rows(self) -> Iterable[tuple[Any, dict[str, str]]]:
        for attrs, s in self._shadows():
            yield s.compared_rows, {**attrs, "comparison": "compared"}
            yield s.class_rows, {**attrs, "comparison": "class_compared"}
            yield s.agreed_rows, {**attrs, "comparison": "class_agreed"}

    def _agreement(self) -> Iterable[tuple[Any, dict[str, str]]]:
        for attrs, s in self._shadows():
            if s.agreement == s.agreement:  # NaN: no classifier output compared yet
                yield s.agreement, attrs

    def _difference(self) -> Iterable[tuple[Any, dict[str, str]]]:
        for attrs, s in self._shadows():
            if s.mean_abs_diff == s.mean_abs_diff:
                yield s.mean_abs_diff, {**attrs, "statistic": "mean"}
                yield s.max_abs_diff, {**attrs, "statistic": "max"}

    def _latency(self) -> Iterable[tuple[Any, dict[str, str]]]:
        for attrs, s in self._shadows():
            if s.mean_latency_diff_ms == s.mean_latency_diff_ms:
                yield s.mean_latency_diff_ms / 1e3, attrs
