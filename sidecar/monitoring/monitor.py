"""The monitoring stage (``Monitoring``): attaches a ``VersionMonitor`` (sidecar.monitoring.version_monitor:
counting, windows, alerts, reports) to every loaded version and evaluates the closed windows.

``prepare`` runs before a version reports READY: it loads and checks the version's reference profile
(without one, ``quality_only_profile``: NaN/inf counts of the float inputs) and sets the version's
``observer``. A malformed reference profile is a ``ModelLoadError`` then, never a request-time error.
The stage's task wakes when a monitor closes a window or the nearest time window ends, and evaluates
(``flush``): drift statistics, history and alerts, off the request path; alert changes go to the
``on_alert`` listeners.

Reading (``reports``, ``alerts``, ``snapshot``) works from any thread. ``Monitoring._monitors`` is
replaced, never mutated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sidecar.config import MonitoringConfig
from sidecar.errors import ModelLoadError
from sidecar.monitoring.alerts import RAISED, Alert, AlertEvent
from sidecar.monitoring.binning import ProfileCounter
from sidecar.monitoring.profile import (
    FLOAT_DATATYPES,
    NumericFeature,
    ReferenceProfile,
    Source,
    check_against_signature,
    load_profile,
    row_width,
)
from sidecar.monitoring.report import MonitoringSnapshot, VersionReport
from sidecar.monitoring.version_monitor import VersionMonitor, hold_rows
from sidecar.types import TensorSpec, row_bytes

log = logging.getLogger(__name__)


def quality_only_profile(model: str, version: str, inputs: Sequence[TensorSpec], batched: bool) -> ReferenceProfile:
    """Without a reference profile: NaN/inf counts of the float inputs (degenerate edges, no drift)."""
    sources = []
    for spec in inputs:
        width = row_width(spec, batched)
        if spec.datatype not in FLOAT_DATATYPES or not width:
            continue
        names = [spec.name] if width == 1 else [f"{spec.name}[{j}]" for j in range(width)]
        feats = tuple(NumericFeature(n, (0.0, 0.0), (0, 0, 0, 0, 0)) for n in names)
        sources.append(Source("input", spec.name, "columns", spec.datatype, width, feats))
    return ReferenceProfile(model, version, 0, 1, tuple(sources), 0.0, "")


class Monitoring:
    """The monitoring stage: attaches a VersionMonitor to every loaded version and evaluates its windows."""

    def __init__(self, config: MonitoringConfig, repository: Any | None = None) -> None:
        self.config = config
        self._monitors: dict[tuple[str, str], VersionMonitor] = {}
        self._event = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._listeners: list[Callable[[AlertEvent], None]] = []
        self.kernel = ""
        if repository is not None and config.enabled:
            repository.before_ready(self.prepare)
            repository.on_change(self._on_change)

    # -- versions -------------------------------------------------------------------------------
    def prepare(self, mv: Any, engine: Any) -> None:
        """Before a version reports READY: load and check its reference profile, attach a monitor.

        Raises ModelLoadError for a malformed profile (the version then fails to load, with this reason)."""
        from sidecar.monitoring.histogram import KERNEL

        self.kernel = KERNEL
        batched = engine.max_batch_size > 0
        path = Path(mv.path) / self.config.profile_file
        label = f"model '{mv.name}' version '{mv.version_str}'"
        if path.is_file():
            profile = load_profile(path)
            check_against_signature(profile, engine.inputs, engine.outputs, batched, str(path))
            has_reference = True
        else:
            profile = quality_only_profile(mv.name, mv.version_str, engine.inputs, batched)
            has_reference = False
        try:
            counter = ProfileCounter(profile)
        except (ValueError, TypeError) as exc:
            raise ModelLoadError(f"{path}: reference profile cannot be compiled: {exc}") from exc
        monitor = VersionMonitor(
            mv.name,
            mv.version_str,
            counter,
            self.config,
            has_reference=has_reference,
            profile_path=str(path) if has_reference else "",
            kernel=KERNEL,
            wake=self._event.set,
            hold=hold_rows(row_bytes(engine.inputs, batched)),
        )
        mv.observer = monitor
        self._monitors = {**self._monitors, (mv.name, mv.version_str): monitor}
        self._event.set()  # the task re-reads when the next time window ends
        if has_reference:
            log.info(
                "%s: drift monitoring of %d feature(s) against %s (%d reference rows, kernel %s)",
                label,
                len(counter.slots),
                path.name,
                profile.rows,
                KERNEL,
            )
        else:
            log.info("%s: no %s; monitoring data quality only", label, self.config.profile_file)

    def _on_change(self, mv: Any) -> None:
        if mv.state.value in ("UNLOADING", "UNAVAILABLE"):
            key = (mv.name, mv.version_str)
            current = self._monitors.get(key)
            if current is not None and current is getattr(mv, "observer", None):
                self._monitors = {k: v for k, v in self._monitors.items() if k != key}

    def add(self, monitor: VersionMonitor) -> None:
        """Register a monitor built by hand (tests, benchmarks, a collector)."""
        self._monitors = {**self._monitors, (monitor.model, monitor.version): monitor}

    def monitors(self) -> list[VersionMonitor]:
        return [self._monitors[k] for k in sorted(self._monitors)]

    def get(self, model: str, version: str) -> VersionMonitor | None:
        return self._monitors.get((model, version))

    def on_alert(self, callback: Callable[[AlertEvent], None]) -> None:
        """``callback(event)`` runs on the event loop for every alert raised or cleared; keep it short."""
        self._listeners.append(callback)

    # -- window evaluation, periodic, on the event loop ------------------------------------------
    async def start(self) -> None:
        if self._task is None and self.config.enabled:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), self._until_next_time_window())
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("monitoring: evaluating windows failed")

    def _until_next_time_window(self) -> float | None:
        monitors = self._monitors.values()
        if not monitors:
            return None
        now = time.monotonic()
        nearest = min(m.next_time_boundary() for m in monitors)
        return max(0.0, nearest - now) + 0.001

    async def flush(self) -> None:
        """Close the time windows that are due and evaluate every closed window now (alerts included)."""
        self._event.clear()
        now = time.monotonic()
        events: list[AlertEvent] = []
        for monitor in list(self._monitors.values()):
            try:
                events += monitor.tick(now)
            except Exception:
                log.exception("monitoring %s %s: window evaluation failed", monitor.model, monitor.version)
        for event in events:
            if event.kind == RAISED:
                log.warning("drift alert raised: %s", event.alert.describe())
            else:
                log.info("drift alert cleared: %s", event.alert.describe())
            for callback in self._listeners:
                try:
                    callback(event)
                except Exception:
                    log.exception("alert listener failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])  # our own task's cancellation, not ours: nothing to swallow
            self._task = None
            await self.flush()

    # -- reading (any thread) -------------------------------------------------------------------
    def reports(self, model: str = "", version: str = "") -> list[VersionReport]:
        return [
            m.report()
            for m in self.monitors()
            if (not model or m.model == model) and (not version or m.version == version)
        ]

    def alerts(self) -> list[Alert]:
        return [a for m in self.monitors() for a in m.alerts]

    def snapshot(self) -> MonitoringSnapshot:
        """Frozen per-version counts, statistics and alerts (the telemetry stage's read API)."""
        return MonitoringSnapshot(self.kernel, tuple(m.snapshot() for m in self.monitors()))
