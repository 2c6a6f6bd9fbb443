"""Per-version monitors and the monitoring stage that drives them.

The request path pays for one list append: ``ModelVersion.infer`` calls ``observer.observe(inputs,
outputs, rows)`` after the answer is ready, which stores references to the (read-only) tensors in the
version's bounded buffer and sets an event. A background task woken by that event lets observations
gather for ``flush_interval_ms``, takes every buffer, and folds each version's chunk into its
histograms with one vectorized update per source (the histogram kernel) on a dedicated thread, off
the event loop. When a buffer holds ``buffer_rows`` rows, further observations are dropped and
counted, never queued: memory stays bounded and requests never wait for monitoring.

Requests the version rejects for their inputs (``InvalidTensor`` at validation) are counted with
``observer.rejected()`` and reported as ``schema_violation_rate``.

Monitoring never fails a request: ``observe``/``rejected`` cannot raise, and an error while folding a
chunk is logged and counted (``errors_total``). A malformed reference profile is a ``ModelLoadError``
when the version loads (``Monitoring.prepare``), never a request-time error.

Concurrency: buffers and the ``*_total`` counters written by the hooks belong to the event-loop
thread; accumulators, history and alert state belong to the monitoring thread and are guarded by the
version monitor's lock, which ``report()``/``snapshot()`` take too, so those can be called from any
thread (the telemetry exporter's, say). ``Monitoring._monitors`` is replaced, never mutated.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from sidecar.config import MonitoringConfig
from sidecar.errors import ModelLoadError
from sidecar.monitoring.alerts import RAISED, Alert, AlertEvent, AlertTracker
from sidecar.monitoring.binning import ProfileCounter
from sidecar.monitoring.drift import Thresholds
from sidecar.monitoring.profile import (
    FLOAT_DATATYPES,
    NUMERIC,
    NumericFeature,
    ReferenceProfile,
    Source,
    check_against_signature,
    load_profile,
    row_width,
)
from sidecar.monitoring.report import (
    FeatureCounts,
    MonitoringSnapshot,
    VersionReport,
    VersionSnapshot,
    WindowReport,
)
from sidecar.monitoring.window import Accumulator, evaluate
from sidecar.types import TensorSpec

log = logging.getLogger(__name__)

Item = tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray], float, int]  # inputs, outputs, t, rows


def thresholds_from(cfg: MonitoringConfig) -> Thresholds:
    return Thresholds(
        psi_warn=cfg.psi_warn,
        psi_alert=cfg.psi_alert,
        js_warn=cfg.js_warn,
        js_alert=cfg.js_alert,
        significance=cfg.significance,
        ks_warn_p=cfg.ks_warn_p,
        ks_alert_p=cfg.ks_alert_p,
        chi2_warn_p=cfg.chi2_warn_p,
        chi2_alert_p=cfg.chi2_alert_p,
        missing_rate_warn=cfg.missing_rate_warn,
        missing_rate_alert=cfg.missing_rate_alert,
        inf_rate_warn=cfg.inf_rate_warn,
        inf_rate_alert=cfg.inf_rate_alert,
        out_of_range_rate_warn=cfg.out_of_range_rate_warn,
        out_of_range_rate_alert=cfg.out_of_range_rate_alert,
        schema_violation_rate_warn=cfg.schema_violation_rate_warn,
        schema_violation_rate_alert=cfg.schema_violation_rate_alert,
        min_rows=cfg.min_window_rows,
    )


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


class VersionMonitor:
    """Watches one model version: buffer (loop thread), windows and alerts (monitoring thread)."""

    def __init__(
        self,
        model: str,
        version: str,
        counter: ProfileCounter,
        config: MonitoringConfig,
        *,
        has_reference: bool,
        profile_path: str = "",
        kernel: str = "",
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.model = model
        self.version = version
        self.counter = counter
        self.has_reference = has_reference
        self.profile_path = profile_path
        self.kernel = kernel
        self._config = config
        self._thresholds = thresholds_from(config)
        self._wake = wake
        self._capacity = config.buffer_rows
        self._window_requests = config.window_requests
        self._window_s = config.window_s
        # event-loop thread
        self._buffer: list[Item] = []
        self._buffered_rows = 0
        self.dropped_total = 0
        self.rejected_total = 0
        # monitoring thread, under _lock
        self._lock = threading.Lock()
        now_mono, now_unix = time.monotonic(), time.time()
        size = counter.size
        self._cumulative = Accumulator("cumulative", size, now_mono, now_unix)
        self._count = Accumulator("count", size, now_mono, now_unix)
        self._time = Accumulator("time", size, now_mono, now_unix)
        self._history: dict[str, deque[WindowReport]] = {
            "count": deque(maxlen=config.history_windows),
            "time": deque(maxlen=config.history_windows),
        }
        self._seen_rejected = 0
        self._seen_dropped = 0
        self.errors_total = 0
        self._cached_cumulative: tuple[int, int, WindowReport] | None = None
        self._tracker = AlertTracker(
            model,
            version,
            config.alert_window,
            config.alert_after_windows,
            config.clear_after_windows,
            frozenset(config.alert_statistics),
        )
        bins = []
        for slot in counter.slots:
            f = slot.feature
            if slot.kind == NUMERIC:
                e = f.edges  # type: ignore[union-attr]
                labels = [f"<{e[0]:.6g}"]
                labels += [f"[{a:.6g},{b:.6g})" for a, b in itertools.pairwise(e[:-1])]
                labels += [f"[{e[-2]:.6g},{e[-1]:.6g}]", f">{e[-1]:.6g}", "nan", "inf"]
            else:
                labels = [str(c) for c in f.categories] + ["other", "missing"]  # type: ignore[union-attr]
            bins.append(tuple(labels))
        self._bin_labels = tuple(bins)

    # -- hooks, on the event loop (must never raise) ---------------------------------------------
    def observe(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], rows: int) -> None:
        """A request was answered: remember its tensors for the next histogram update."""
        if self._buffered_rows >= self._capacity:
            self.dropped_total += 1
            return
        self._buffer.append((inputs, outputs, time.monotonic(), rows))
        self._buffered_rows += rows
        self._wake()

    def rejected(self) -> None:
        """A request was refused for its inputs (schema violation)."""
        self.rejected_total += 1
        self._wake()

    def take(self) -> tuple[list[Item], int, int]:
        """Hand the buffer over (event loop): the items and the rejected/dropped totals at this moment."""
        items, self._buffer = self._buffer, []
        self._buffered_rows = 0
        return items, self.rejected_total, self.dropped_total

    # -- folding, on the monitoring thread -------------------------------------------------------
    def fold(self, items: Sequence[Item], rejected_total: int, dropped_total: int, now_mono: float) -> list[AlertEvent]:
        """Add a chunk to the windows, closing windows that end inside it; returns alert changes."""
        events: list[AlertEvent] = []
        with self._lock:
            dr, self._seen_rejected = rejected_total - self._seen_rejected, rejected_total
            dd, self._seen_dropped = dropped_total - self._seen_dropped, dropped_total
            if items:
                events += self._roll_time(items[0][2])
            for acc in (self._cumulative, self._count, self._time):
                acc.rejected += dr
                acc.dropped += dd
            i, n = 0, len(items)
            while i < n:
                events += self._roll_time(items[i][2])
                end_t = self._time.start_mono + self._window_s
                limit = min(n, i + max(1, self._window_requests - self._count.requests))
                j = i + 1
                while j < limit and items[j][2] < end_t:
                    j += 1
                segment = items[i:j]
                delta = self.counter.zeros()
                try:
                    self.counter.count([it[0] for it in segment], [it[1] for it in segment], delta)
                except Exception:
                    self.errors_total += 1
                    if self.errors_total == 1 or self.errors_total % 1000 == 0:
                        log.exception("%s %s: could not count a chunk of requests", self.model, self.version)
                    i = j
                    continue
                rows = sum(it[3] for it in segment)
                for acc in (self._cumulative, self._count, self._time):
                    acc.add(delta, len(segment), rows)
                if self._count.requests >= self._window_requests:
                    events += self._close(self._count, segment[-1][2])
                i = j
            events += self._roll_time(now_mono)
        return events

    def _roll_time(self, t: float) -> list[AlertEvent]:
        acc = self._time
        if t < acc.start_mono + self._window_s:
            return []
        end = acc.start_mono + self._window_s
        events = self._close(acc, end)
        skipped = int((t - end) // self._window_s)  # whole windows with no traffic at all
        acc.start_mono = end + skipped * self._window_s
        acc.start_unix = time.time() - (time.monotonic() - acc.start_mono)
        acc.index += skipped
        return events

    def _close(self, acc: Accumulator, end_mono: float) -> list[AlertEvent]:
        end_unix = time.time() - (time.monotonic() - end_mono)
        events: list[AlertEvent] = []
        if acc.requests or acc.rejected:
            report = evaluate(acc, self.counter, self._thresholds, self.has_reference, end_unix)
            self._history[acc.kind].append(report)
            if acc.kind == self._config.alert_window:
                pairs = [(f.feature, s) for f in report.features for s in f.statistics]
                pairs += [("*", s) for s in report.statistics]
                events = self._tracker.update(pairs, end_unix)
        acc.reset(end_mono, end_unix)
        return events

    def next_time_boundary(self) -> float:
        """When (``time.monotonic``) the open time window ends."""
        return self._time.start_mono + self._window_s

    # -- reading, from any thread ---------------------------------------------------------------
    def _cumulative_report(self) -> WindowReport:
        acc = self._cumulative
        key = (acc.requests, acc.rejected + acc.dropped)
        cached = self._cached_cumulative
        if cached is not None and cached[:2] == key:
            return cached[2]
        report = evaluate(acc, self.counter, self._thresholds, self.has_reference, time.time())
        self._cached_cumulative = (*key, report)
        return report

    @property
    def alerts(self) -> tuple[Alert, ...]:
        return self._tracker.active

    def history(self, kind: str) -> tuple[WindowReport, ...]:
        with self._lock:
            return tuple(self._history[kind])

    def report(self) -> VersionReport:
        with self._lock:
            windows = [h[-1] for h in (self._history["count"], self._history["time"]) if h]
            windows.append(self._cumulative_report())
            return VersionReport(
                model=self.model,
                version=self.version,
                has_reference=self.has_reference,
                profile_path=self.profile_path,
                kernel=self.kernel,
                window_requests=self._window_requests,
                window_s=self._window_s,
                alert_window=self._config.alert_window,
                requests_total=self._cumulative.requests,
                rows_total=self._cumulative.rows,
                schema_violations_total=self.rejected_total,
                dropped_total=self.dropped_total,
                errors_total=self.errors_total,
                open_count_requests=self._count.requests,
                open_time_requests=self._time.requests,
                windows=tuple(windows),
                alerts=self._tracker.active,
            )

    def snapshot(self) -> VersionSnapshot:
        with self._lock:
            counts = self._cumulative.counts
            ref = self.counter.reference
            features = tuple(
                FeatureCounts(
                    slot.name,
                    slot.source.side,
                    slot.kind,
                    slot.source.derive,
                    labels,
                    tuple(int(c) for c in ref[slot.start : slot.stop]),
                    tuple(int(c) for c in counts[slot.start : slot.stop]),
                )
                for slot, labels in zip(self.counter.slots, self._bin_labels, strict=True)
            )
            history = self._history[self._config.alert_window]
            return VersionSnapshot(
                model=self.model,
                version=self.version,
                has_reference=self.has_reference,
                requests_total=self._cumulative.requests,
                rows_total=self._cumulative.rows,
                schema_violations_total=self.rejected_total,
                dropped_total=self.dropped_total,
                errors_total=self.errors_total,
                features=features,
                last_window=history[-1] if history else None,
                cumulative=self._cumulative_report(),
                alerts=self._tracker.active,
            )

    def cumulative_counts(self) -> np.ndarray:
        """A copy of the cumulative count vector (layout: ``self.counter``); for merging across sidecars."""
        with self._lock:
            return self._cumulative.counts.copy()


class Monitoring:
    """The monitoring stage: attaches a VersionMonitor to every loaded version and drives the folding."""

    def __init__(self, config: MonitoringConfig, repository: Any | None = None) -> None:
        self.config = config
        self._monitors: dict[tuple[str, str], VersionMonitor] = {}
        self._event = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None
        self._drain_lock: asyncio.Lock | None = None
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
        )
        mv.observer = monitor
        self._monitors = {**self._monitors, (mv.name, mv.version_str): monitor}
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
        """``callback(event)`` runs on the monitoring thread for every alert raised or cleared; keep it short."""
        self._listeners.append(callback)

    # -- the folding task -----------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None and self.config.enabled:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="monitor")
            self._drain_lock = asyncio.Lock()
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        interval = self.config.flush_interval_ms / 1000.0
        while True:
            timeout = self._until_next_time_window()
            try:
                await asyncio.wait_for(self._event.wait(), timeout)
                if interval > 0:
                    await asyncio.sleep(interval)  # let a chunk gather: one vectorized update for many requests
            except TimeoutError:
                pass
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("monitoring: folding observations failed")

    def _until_next_time_window(self) -> float | None:
        monitors = self._monitors.values()
        if not monitors:
            return None
        now = time.monotonic()
        nearest = min(m.next_time_boundary() for m in monitors)
        return max(0.0, nearest - now) + 0.001

    async def flush(self) -> None:
        """Fold everything observed so far into the histograms now (also closes windows that are due)."""
        if self._executor is None or self._drain_lock is None:
            await self.start()
        if self._executor is None or self._drain_lock is None:
            return
        async with self._drain_lock:
            self._event.clear()
            work = [(m, *m.take()) for m in self._monitors.values()]
            if not work:
                return
            loop = asyncio.get_running_loop()
            events = await loop.run_in_executor(self._executor, self._fold_all, work, time.monotonic())
        for event in events:
            if event.kind == RAISED:
                log.warning("drift alert raised: %s", event.alert.describe())
            else:
                log.info("drift alert cleared: %s", event.alert.describe())

    def _fold_all(self, work: list, now_mono: float) -> list[AlertEvent]:
        events: list[AlertEvent] = []
        for monitor, items, rejected, dropped in work:
            try:
                events += monitor.fold(items, rejected, dropped, now_mono)
            except Exception:
                log.exception("monitoring %s %s: fold failed", monitor.model, monitor.version)
        for event in events:
            for callback in self._listeners:
                try:
                    callback(event)
                except Exception:
                    log.exception("alert listener failed")
        return events

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])  # our own task's cancellation, not ours: nothing to swallow
            self._task = None
            await self.flush()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

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
