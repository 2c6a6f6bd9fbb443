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
from sidecar.monitoring.drift import NUMERIC_KIND, Thresholds, compare, compare_rows, rate
from sidecar.monitoring.report import FeatureReport, WindowReport


class Accumulator:
    """One window's counts. Mutated only on the event loop, under its version monitor's lock; frozen once
    closed (``end_unix`` set) and handed to evaluation."""

    __slots__ = (
        "counts",
        "dropped",
        "end_unix",
        "index",
        "kind",
        "rejected",
        "requests",
        "rows",
        "start_mono",
        "start_unix",
    )

    def __init__(self, kind: str, size: int, start_mono: float, start_unix: float, index: int = 0) -> None:
        self.kind = kind
        self.index = index
        self.counts = np.zeros(size, dtype=np.int64)
        self.start_mono = start_mono
        self.start_unix = start_unix
        self.end_unix = 0.0
        self.requests = 0
        self.rows = 0
        self.rejected = 0
        self.dropped = 0  # requests answered but not counted (their batch could not be counted)

    def add(self, delta: np.ndarray, requests: int, rows: int) -> None:
        self.counts += delta
        self.requests += requests
        self.rows += rows


def categorical_report(
    slot: FeatureSlot, reference: np.ndarray, counts: np.ndarray, t: Thresholds, has_reference: bool
) -> FeatureReport:
    """Report of one categorical feature: PSI, JS, chi-square and its missing rate."""
    total = slot.total(counts)
    ref_total = slot.total(reference)
    stats = []
    if has_reference:
        stats.extend(compare(slot.kind, slot.distribution(reference), slot.distribution(counts), t))
    ref_missing = slot.missing(reference) / ref_total if ref_total else 0.0
    warn, alert = ref_missing + t.missing_rate_warn, ref_missing + t.missing_rate_alert
    stats.append(rate("missing_rate", slot.missing(counts), total, warn, alert, t.min_rows))
    return FeatureReport(slot.name, slot.source.side, slot.kind, slot.source.derive, total, tuple(stats))


def _numeric_reports(
    slots: tuple[FeatureSlot, ...], ref: np.ndarray, cur: np.ndarray, t: Thresholds, has_reference: bool
) -> list[FeatureReport]:
    """Reports of a block of numeric features at once: ``ref``/``cur`` are (F, B + 4) counts."""
    drift_stats = compare_rows(NUMERIC_KIND, ref[:, :-2], cur[:, :-2], t) if has_reference else [()] * len(slots)
    totals, ref_totals = cur.sum(axis=1), ref.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref_missing = np.where(ref_totals > 0, ref[:, -2] / ref_totals, 0.0)
        ref_inf = np.where(ref_totals > 0, ref[:, -1] / ref_totals, 0.0)
    finite = (totals - cur[:, -2] - cur[:, -1]).tolist()
    # Python scalars up front: indexing numpy arrays element by element costs ~10x more per feature.
    missing, infs, oors = cur[:, -2].tolist(), cur[:, -1].tolist(), (cur[:, 0] + cur[:, -3]).tolist()
    totals_list, ref_missing_list, ref_inf_list = totals.tolist(), ref_missing.tolist(), ref_inf.tolist()
    out = []
    for i, slot in enumerate(slots):
        total = totals_list[i]
        stats = [
            *drift_stats[i],
            rate("missing_rate", missing[i], total, ref_missing_list[i] + t.missing_rate_warn,
                 ref_missing_list[i] + t.missing_rate_alert, t.min_rows),
            rate("inf_rate", infs[i], total, ref_inf_list[i] + t.inf_rate_warn, ref_inf_list[i] + t.inf_rate_alert,
                 t.min_rows),
        ]  # fmt: skip
        if has_reference:
            oor = oors[i]
            stats.append(
                rate("out_of_range_rate", oor, finite[i], t.out_of_range_rate_warn, t.out_of_range_rate_alert,
                     t.min_rows)
            )  # fmt: skip
        out.append(FeatureReport(slot.name, slot.source.side, slot.kind, slot.source.derive, total, tuple(stats)))
    return out


def evaluate(
    acc: Accumulator,
    counter: ProfileCounter,
    t: Thresholds,
    has_reference: bool,
    end_unix: float,
) -> WindowReport:
    """The drift and quality report of one window's counts against the reference."""
    by_name: dict[str, FeatureReport] = {}
    for slots, start, stop, stride in counter.numeric_blocks:
        ref = counter.reference[start:stop].reshape(-1, stride)
        cur = acc.counts[start:stop].reshape(-1, stride)
        for report in _numeric_reports(slots, ref, cur, t, has_reference):
            by_name[report.feature] = report
    features = tuple(
        by_name.get(s.name) or categorical_report(s, counter.reference, acc.counts, t, has_reference)
        for s in counter.slots
    )
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
