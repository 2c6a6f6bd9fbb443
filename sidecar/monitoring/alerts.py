"""Alerts with hysteresis.

A (feature, statistic) pair raises an alert when its value is at or above its alert threshold in
``raise_after`` consecutive closed windows, and the alert clears when the value stays below the
threshold for ``clear_after`` consecutive windows. Windows with too little data
(``insufficient_data``) neither extend nor break a streak. Each alert names the model, version,
feature, statistic, value and threshold.

Concurrency: ``AlertTracker.update`` runs on the monitoring thread under its version monitor's lock;
``active`` is a tuple replaced (never mutated) on every change, so readers need no lock.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from sidecar.monitoring.drift import ALERT, INSUFFICIENT, NO_REFERENCE, StatisticValue

RAISED = "raised"
CLEARED = "cleared"


@dataclass(frozen=True, slots=True)
class Alert:
    model: str
    version: str
    feature: str  # "*" for version-wide statistics (schema violations)
    statistic: str
    value: float  # the latest window's value
    threshold: float  # the alert threshold in force for that window
    window: str  # "count" or "time": the window kind alerts are evaluated on
    raised_unix: float
    windows: int  # consecutive windows at or above the threshold so far

    def describe(self) -> str:
        where = "" if self.feature == "*" else f" feature '{self.feature}'"
        return (
            f"model '{self.model}' version '{self.version}'{where}: {self.statistic} = {self.value:.4g} "
            f">= threshold {self.threshold:.4g} for {self.windows} consecutive {self.window} windows"
        )


@dataclass(frozen=True, slots=True)
class AlertEvent:
    kind: str  # RAISED or CLEARED
    alert: Alert


class AlertTracker:
    def __init__(
        self, model: str, version: str, window: str, raise_after: int, clear_after: int, statistics: frozenset[str]
    ) -> None:
        self._model = model
        self._version = version
        self._window = window
        self._raise_after = max(1, raise_after)
        self._clear_after = max(1, clear_after)
        self._statistics = statistics
        self._above: dict[tuple[str, str], int] = {}
        self._below: dict[tuple[str, str], int] = {}
        self._active: dict[tuple[str, str], Alert] = {}
        self.active: tuple[Alert, ...] = ()

    def update(self, results: Iterable[tuple[str, StatisticValue]], now_unix: float | None = None) -> list[AlertEvent]:
        """Feed one closed window's statistics ((feature, value) pairs); returns the alerts raised or cleared."""
        now = time.time() if now_unix is None else now_unix
        events: list[AlertEvent] = []
        for feature, stat in results:
            if stat.name not in self._statistics or stat.status in (INSUFFICIENT, NO_REFERENCE):
                continue
            key = (feature, stat.name)
            if stat.status == ALERT:
                above = self._above.get(key, 0) + 1
                self._above[key] = above
                self._below[key] = 0
                current = self._active.get(key)
                if current is not None:
                    # Positional construction: dataclasses.replace costs ~3x more, once per active alert per window.
                    self._active[key] = Alert(
                        current.model, current.version, current.feature, current.statistic, stat.value, stat.alert,
                        current.window, current.raised_unix, above,
                    )  # fmt: skip
                elif above >= self._raise_after:
                    alert = Alert(
                        self._model, self._version, feature, stat.name, stat.value, stat.alert, self._window, now, above
                    )
                    self._active[key] = alert
                    events.append(AlertEvent(RAISED, alert))
            else:
                below = self._below.get(key, 0) + 1
                self._below[key] = below
                self._above[key] = 0
                current = self._active.get(key)
                if current is not None:
                    updated = Alert(
                        current.model, current.version, current.feature, current.statistic, stat.value, stat.alert,
                        current.window, current.raised_unix, 0,
                    )  # fmt: skip
                    if below >= self._clear_after:
                        del self._active[key]
                        events.append(AlertEvent(CLEARED, updated))
                    else:
                        self._active[key] = updated
        self.active = tuple(self._active[k] for k in sorted(self._active))
        return events
