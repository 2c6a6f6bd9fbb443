"""One model version's monitor (``VersionMonitor``): counting answered batches, count and time windows,
window evaluation and alerts, and the reports read from it. The stage that attaches one to every
loaded version and runs the periodic evaluation is ``sidecar.monitoring.monitor.Monitoring``.

Counting is per engine run, not per request: the scheduler that ran a batch (``DynamicBatcher`` after
it answered the batch's callers, ``DirectScheduler`` after one unbatched run) calls
``observer.observe(inputs, outputs, request_rows)`` once, with the batch's merged input arrays (an
unbatched run's: the request's own tensors, decoded from its bytes only when counted), its output
arrays and the rows of each request in it. ``VersionMonitor.observe`` holds the batch (a
reference to its arrays, no copy) and, once the held batches reach ``HOLD_ROWS`` rows (fewer for
image-sized rows: at most ``HOLD_BYTES`` of inputs, ``hold_rows``), counts them all together on the
event loop: per source one concatenation and one vectorized update (the histogram
kernel), about 1 us per batch amortized. Held batches are also counted at every window boundary and
before anything is read, so reports never lag. Nothing is queued to a thread, and memory is fixed by
the profile plus the held rows.

Windows: a count window closes after exactly ``window_requests`` requests (a batch that crosses the
boundary is split at that request's rows), a time window every ``window_s`` seconds. A closed window is
queued and the stage is woken; ``tick`` evaluates it (drift statistics, history, alerts, about 1 ms per
window) on the event loop shortly after, and closes time windows that end without traffic: periodic
work, off the request path.

Requests the version rejects for their inputs (``InvalidTensor`` at validation) are counted with
``observer.rejected()`` and reported as ``schema_violation_rate``.

Monitoring never fails a request: ``observe``/``rejected`` cannot raise; a batch that cannot be counted
is logged and counted (``errors_total``, and its requests as ``dropped``).

Concurrency: the hooks and window evaluation run on the event loop; every change of a monitor's state
happens under its lock, which ``report()``/``snapshot()`` take too (counting held batches first), so
those can be called from any thread (the telemetry exporter's, say).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from sidecar.config import MonitoringConfig
from sidecar.monitoring.alerts import Alert, AlertEvent, AlertTracker
from sidecar.monitoring.binning import ProfileCounter
from sidecar.monitoring.drift import Thresholds
from sidecar.monitoring.profile import NUMERIC
from sidecar.monitoring.report import FeatureCounts, VersionReport, VersionSnapshot, WindowReport
from sidecar.monitoring.window import Accumulator, evaluate
from sidecar.types import aligned_inputs

log = logging.getLogger(__name__)

HOLD_ROWS = 512  # rows of answered batches held (referenced, not copied) before they are counted together
HOLD_BYTES = 1 << 20  # ... at most this many bytes of inputs: image-sized rows are counted batch by batch


def hold_rows(row_bytes: int) -> int:
    """Rows held before counting, for inputs of ``row_bytes`` bytes a row (0: unknown, variable shapes):
    ``HOLD_ROWS``, fewer where that many rows would hold more than ``HOLD_BYTES`` (at least 1). Held rows
    keep their batch's memory alive: a kept merge buffer, an ingest worker's shared memory."""
    if row_bytes <= 0:
        return HOLD_ROWS
    return max(1, min(HOLD_ROWS, HOLD_BYTES // row_bytes))


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


def bin_labels(counter: ProfileCounter) -> tuple[tuple[str, ...], ...]:
    """Each feature's bin names, in count order (numeric: below, the bins, above, nan, inf; categorical:
    the categories, other, missing)."""
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
    return tuple(bins)


class VersionMonitor:
    """Watches one model version: counts per batch (event loop), windows, alerts."""

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
        hold: int = HOLD_ROWS,
    ) -> None:
        self.model = model
        self._hold_rows = max(1, hold)  # see hold_rows()
        self.version = version
        self.counter = counter
        self.has_reference = has_reference
        self.profile_path = profile_path
        self.kernel = kernel
        self._config = config
        self._thresholds = thresholds_from(config)
        self._wake = wake
        self._window_requests = config.window_requests
        self._window_s = config.window_s
        self._lock = threading.Lock()
        now_mono, now_unix = time.monotonic(), time.time()
        size = counter.size
        # Counts since the last window boundary of any kind: added to the three accumulators at the next
        # boundary (or read), so a batch is counted once, not three times. Zeroed in place, never replaced:
        # the batch counter holds views of it.
        self._open = counter.zeros()
        self._count_batch = counter.batch_counter(self._open)
        self._open_requests = 0
        self._open_rows = 0
        self._open_rejected = 0
        self._open_dropped = 0
        # Batches not counted yet: counted together (one kernel call per source) once they hold HOLD_ROWS
        # rows, at a window boundary, or when anything is read.
        self._held: list[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray], int, int]] = []
        self._held_requests = 0
        self._held_rows = 0
        self._cumulative = Accumulator("cumulative", size, now_mono, now_unix)
        self._count = Accumulator("count", size, now_mono, now_unix)
        self._time = Accumulator("time", size, now_mono, now_unix)
        self._time_end = now_mono + self._window_s
        self._closed: list[Accumulator] = []  # closed windows waiting for evaluation, in closing order
        self._history: dict[str, deque[WindowReport]] = {
            "count": deque(maxlen=config.history_windows),
            "time": deque(maxlen=config.history_windows),
        }
        self.rejected_total = 0
        self.dropped_total = 0
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
        self._bin_labels = bin_labels(counter)

    # -- hooks, on the event loop (must never raise) ---------------------------------------------
    def observe(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        request_rows: Sequence[int],
        now_mono: float | None = None,
    ) -> None:
        """One engine run was answered: count its (merged) inputs and outputs into the open windows.

        ``request_rows``: the rows of each request in the batch, in order (rows are the arrays' first
        dimension, so a batch that fills the count window is split at that request's boundary)."""
        try:
            t = time.monotonic() if now_mono is None else now_mono
            with self._lock:
                if t >= self._time_end:
                    self._roll_time(t)
                n = len(request_rows)
                room = self._window_requests - self._count.requests - self._open_requests - self._held_requests
                if n < room:
                    rows = sum(request_rows)
                    self._held.append((inputs, outputs, n, rows))
                    self._held_requests += n
                    self._held_rows += rows
                    if self._held_rows >= self._hold_rows:
                        self._count_held()
                    return
                self._count_held()
                inputs = aligned_inputs(inputs)  # (its slices reach the kernel alone)
                room = self._window_requests - self._count.requests - self._open_requests
                i = offset = 0
                while i < n:
                    j = min(n, i + room)
                    rows = sum(request_rows[i:j])
                    if i == 0 and j == n:
                        self._add(inputs, outputs, n, rows)
                    else:
                        end = offset + rows
                        self._add(
                            {k: a[offset:end] for k, a in inputs.items()},
                            {k: a[offset:end] for k, a in outputs.items()},
                            j - i,
                            rows,
                        )
                        offset = end
                    if self._count.requests + self._open_requests >= self._window_requests:
                        self._close(self._count, t)
                    i, room = j, self._window_requests
        except Exception:  # never fail a request because of monitoring
            self._error()

    def rejected(self) -> None:
        """A request was refused for its inputs (schema violation)."""
        with self._lock:
            self.rejected_total += 1
            self._open_rejected += 1

    def _count_held(self) -> None:
        """Count the held batches together; if that fails, one by one (only a bad batch is dropped)."""
        held = self._held
        if not held:
            return
        requests, rows = self._held_requests, self._held_rows
        self._held = []
        self._held_requests = self._held_rows = 0
        if len(held) == 1:
            self._add(*held[0])
            return
        try:
            self._count_batch([h[0] for h in held], [h[1] for h in held])  # whole, or nothing when it raises
        except Exception:
            for h in held:
                self._add(*h)
            return
        self._open_requests += requests
        self._open_rows += rows

    def _add(
        self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], requests: int, rows: int
    ) -> None:
        try:
            # One batch alone reaches the kernel as it is: a request's tensors may be unaligned views.
            self._count_batch((aligned_inputs(inputs),), (outputs,))  # counted whole or, when it raises, not at all
        except Exception:
            self.dropped_total += requests
            self._open_dropped += requests
            self._error()
            return
        self._open_requests += requests
        self._open_rows += rows

    def _error(self) -> None:
        self.errors_total += 1
        if self.errors_total == 1 or self.errors_total % 1000 == 0:
            log.exception("%s %s: could not count a batch (%d so far)", self.model, self.version, self.errors_total)

    # -- windows (under _lock) -------------------------------------------------------------------
    def _settle(self) -> None:
        """Count the held batches and add the open counts to the three accumulators."""
        self._count_held()
        if self._open_requests or self._open_rejected or self._open_dropped:
            for acc in (self._cumulative, self._count, self._time):
                acc.add(self._open, self._open_requests, self._open_rows)
                acc.rejected += self._open_rejected
                acc.dropped += self._open_dropped
            self._open[:] = 0
            self._open_requests = self._open_rows = self._open_rejected = self._open_dropped = 0

    def _roll_time(self, t: float) -> None:
        acc = self._time
        end = self._time_end
        if t < end:
            return
        self._close(acc, end)
        skipped = int((t - end) // self._window_s)  # whole windows with no traffic at all
        start = end + skipped * self._window_s
        self._time.start_mono = start
        self._time.start_unix = time.time() - (time.monotonic() - start)
        self._time.index += skipped
        self._time_end = start + self._window_s

    def _close(self, acc: Accumulator, end_mono: float) -> None:
        """Close ``acc``'s window at ``end_mono``: queue it for evaluation and open the next one."""
        self._settle()
        end_unix = time.time() - (time.monotonic() - end_mono)
        if acc.requests or acc.rejected or acc.dropped:
            acc.end_unix = end_unix
            self._closed.append(acc)
            self._wake()
        fresh = Accumulator(acc.kind, self.counter.size, end_mono, end_unix, acc.index + 1)
        if acc.kind == "count":
            self._count = fresh
        else:
            self._time = fresh

    def tick(self, now_mono: float | None = None) -> list[AlertEvent]:
        """Close the time window if it ended by ``now_mono`` and evaluate every closed window (drift
        statistics, history, alerts); returns the alert changes. Periodic, off the request path."""
        t = time.monotonic() if now_mono is None else now_mono
        with self._lock:
            if t >= self._time_end:
                self._roll_time(t)
            closed, self._closed = self._closed, []
        events: list[AlertEvent] = []
        for acc in closed:
            report = evaluate(acc, self.counter, self._thresholds, self.has_reference, acc.end_unix)
            with self._lock:
                self._history[acc.kind].append(report)
                if acc.kind == self._config.alert_window:
                    pairs = [(f.feature, s) for f in report.features for s in f.statistics]
                    pairs += [("*", s) for s in report.statistics]
                    events += self._tracker.update(pairs, acc.end_unix)
        return events

    def next_time_boundary(self) -> float:
        """When (``time.monotonic``) the open time window ends."""
        return self._time_end

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
            self._settle()
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
            self._settle()
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
            self._settle()
            return self._cumulative.counts.copy()
