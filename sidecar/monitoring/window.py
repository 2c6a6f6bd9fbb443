"""Streaming windows and their evaluation.

A version monitor keeps three accumulators, each a flat ``int64`` count vector (layout:
``binning.ProfileCounter``) plus request/row/violation counters:

* ``count``: a tumbling window closed after ``window_requests`` requests;
* ``time``: a tumbling window closed every ``window_s`` seconds (aligned to its start, closed even when
  no request arrives);
* ``cumulative``: everything since the version loaded (never reset).

Memory is fixed by the profile (three vectors, plus ``history_windows`` closed reports per kind),
whatever the traffic.
"""

from __future__ import annotations

import numpy as np

from sidecar.monitoring.binning import FeatureSlot, ProfileCounter
from sidecar.monitoring.drift import NUMERIC_KIND, Thresholds, compare, rate
from sidecar.monitoring.report import FeatureReport, WindowReport


class Accumulator:
    """One window's counts. Mutated only by the monitoring thread under its version monitor's lock."""

    __slots__ = ("counts", "dropped", "index", "kind", "rejected", "requests", "rows", "start_mono", "start_unix")

    def __init__(self, kind: str, size: int, start_mono: float, start_unix: float) -> None:
        self.kind = kind
        self.index = 0
        self.counts = np.zeros(size, dtype=np.int64)
        self.start_mono = start_mono
        self.start_unix = start_unix
        self.requests = 0
        self.rows = 0
        self.rejected = 0
        self.dropped = 0

    def add(self, delta: np.ndarray, requests: int, rows: int) -> None:
        self.counts += delta
        self.requests += requests
        self.rows += rows

    def reset(self, start_mono: float, start_unix: float) -> None:
        self.index += 1
        self.counts[:] = 0
        self.start_mono = start_mono
        self.start_unix = start_unix
        self.requests = self.rows = self.rejected = self.dropped = 0


def feature_report(
    slot: FeatureSlot, reference: np.ndarray, counts: np.ndarray, t: Thresholds, has_reference: bool
) -> FeatureReport:
    total = slot.total(counts)
    ref_total = slot.total(reference)
    stats = []
    if has_reference:
        stats.extend(compare(slot.kind, slot.distribution(reference), slot.distribution(counts), t))
    ref_missing = slot.missing(reference) / ref_total if ref_total else 0.0
    stats.append(
        rate(
            "missing_rate",
            slot.missing(counts),
            total,
            ref_missing + t.missing_rate_warn,
            ref_missing + t.missing_rate_alert,
            t.min_rows,
        )
    )
    if slot.kind == NUMERIC_KIND:
        ref_inf = slot.infinite(reference) / ref_total if ref_total else 0.0
        stats.append(
            rate(
                "inf_rate",
                slot.infinite(counts),
                total,
                ref_inf + t.inf_rate_warn,
                ref_inf + t.inf_rate_alert,
                t.min_rows,
            )
        )
        if has_reference:
            finite = total - slot.missing(counts) - slot.infinite(counts)
            stats.append(
                rate(
                    "out_of_range_rate",
                    slot.out_of_range(counts),
                    finite,
                    t.out_of_range_rate_warn,
                    t.out_of_range_rate_alert,
                    t.min_rows,
                )
            )
    return FeatureReport(slot.name, slot.source.side, slot.kind, slot.source.derive, total, tuple(stats))


def evaluate(
    acc: Accumulator,
    counter: ProfileCounter,
    t: Thresholds,
    has_reference: bool,
    end_unix: float,
) -> WindowReport:
    """The drift and quality report of one window's counts against the reference."""
    features = tuple(feature_report(s, counter.reference, acc.counts, t, has_reference) for s in counter.slots)
    attempted = acc.requests + acc.dropped + acc.rejected
    violations = rate(
        "schema_violation_rate",
        acc.rejected,
        attempted,
        t.schema_violation_rate_warn,
        t.schema_violation_rate_alert,
        t.min_rows,
    )
    return WindowReport(
        kind=acc.kind,
        index=acc.index,
        start_unix=acc.start_unix,
        end_unix=end_unix,
        requests=acc.requests,
        rows=acc.rows,
        schema_violations=acc.rejected,
        dropped=acc.dropped,
        reference_rows=counter.profile.rows,
        features=features,
        statistics=(violations,),
    )
