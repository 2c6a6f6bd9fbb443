"""Frozen values the monitoring stage hands out: window reports, version reports and snapshots.

Everything here is immutable (principle 9), so the control API, ``sidecar status`` and the
telemetry exporter read them from any thread without locks.

``VersionSnapshot`` is the read API for telemetry: per feature the *cumulative* bin counts (plain
counters since the version loaded: a collector summing them across sidecars gets the fleet's
histogram, and ``sidecar.monitoring.drift`` computes the fleet's PSI from the sum), the reference
counts and bin labels, the statistics of the last closed alert window and since start, and the
active alerts.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.monitoring.alerts import Alert
from sidecar.monitoring.drift import ALERT, INSUFFICIENT, NO_REFERENCE, OK, WARN, StatisticValue

_SEVERITY = {OK: 0, INSUFFICIENT: 0, NO_REFERENCE: 0, WARN: 1, ALERT: 2}


def worst(statuses: list[str] | tuple[str, ...]) -> str:
    """The most severe of some statuses (ok when there are none or all lack data)."""
    best = OK
    for s in statuses:
        if _SEVERITY.get(s, 0) > _SEVERITY[best]:
            best = s
    return best


@dataclass(frozen=True, slots=True)
class FeatureReport:
    feature: str
    side: str  # "input" | "output"
    kind: str  # "numeric" | "categorical"
    derive: str  # "columns" | "confidence" | "class"
    values: int  # values counted in the window, missing ones included
    statistics: tuple[StatisticValue, ...]

    @property
    def status(self) -> str:
        return worst(tuple(s.status for s in self.statistics))

    def statistic(self, name: str) -> StatisticValue | None:
        for s in self.statistics:
            if s.name == name:
                return s
        return None


@dataclass(frozen=True, slots=True)
class WindowReport:
    kind: str  # "count" | "time" | "cumulative"
    index: int  # 0, 1, 2, ... per kind
    start_unix: float
    end_unix: float  # when it closed (now, for the cumulative window)
    requests: int
    rows: int
    schema_violations: int
    dropped: int
    reference_rows: int
    features: tuple[FeatureReport, ...]
    statistics: tuple[StatisticValue, ...]  # version-wide (schema_violation_rate)

    @property
    def status(self) -> str:
        return worst(tuple(f.status for f in self.features) + tuple(s.status for s in self.statistics))

    def feature(self, name: str) -> FeatureReport | None:
        for f in self.features:
            if f.feature == name:
                return f
        return None


@dataclass(frozen=True, slots=True)
class VersionReport:
    model: str
    version: str
    has_reference: bool
    profile_path: str
    kernel: str
    window_requests: int
    window_s: float
    alert_window: str
    requests_total: int
    rows_total: int
    schema_violations_total: int
    dropped_total: int
    errors_total: int
    open_count_requests: int  # requests in the count window still open
    open_time_requests: int
    windows: tuple[WindowReport, ...]  # last closed count window, last closed time window, cumulative
    alerts: tuple[Alert, ...]

    @property
    def status(self) -> str:
        if self.alerts:
            return ALERT
        return worst(tuple(w.status for w in self.windows if w.kind == self.alert_window))

    def window(self, kind: str) -> WindowReport | None:
        for w in self.windows:
            if w.kind == kind:
                return w
        return None


@dataclass(frozen=True, slots=True)
class FeatureCounts:
    feature: str
    side: str
    kind: str
    derive: str
    bins: tuple[str, ...]  # a label per count
    reference: tuple[int, ...]
    cumulative: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class VersionSnapshot:
    model: str
    version: str
    has_reference: bool
    requests_total: int
    rows_total: int
    schema_violations_total: int
    dropped_total: int
    errors_total: int
    features: tuple[FeatureCounts, ...]
    last_window: WindowReport | None  # the last closed window of the alert window kind
    cumulative: WindowReport
    alerts: tuple[Alert, ...]


@dataclass(frozen=True, slots=True)
class MonitoringSnapshot:
    kernel: str
    versions: tuple[VersionSnapshot, ...]
