"""Getting telemetry out without hurting serving: exporters, a bounded span queue, drop accounting.

- Spans: ``BoundedSpanProcessor`` keeps at most ``queue_size`` finished lean spans
  (``lean_tracing.LeanSpan``); a full queue refuses the new span (counted, never blocks the event
  loop); one worker thread encodes and exports them in batches (``otlp``), so a slow or dead collector
  only ever stalls that thread. The worker exports everything queued when it wakes (every schedule
  delay, or when a batch is full), so the GIL is taken for a few long stretches rather than many
  short ones. The OTLP exporters have each span the C encoder takes encoded as it ends
  (``at_end``), so the queue holds bytes; a span only the Python encoder takes is queued as it is
  and encoded here (in Python, encoding as spans end cost the event loop about three times what
  encoding them in batches here does).
- Metrics: cumulative (a failed export loses no totals, the next one carries them); a failed export
  counts its points as dropped. The sidecar's lean histograms are merged into every collection.
- Everything dropped is counted in ``sidecar.telemetry.dropped{signal,reason}`` and logged at most
  once per ``LOG_EVERY_S`` per signal and reason, with the count since the last line.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)

from sidecar.telemetry import lean_tracing
from sidecar.telemetry.histograms import HistogramSet
from sidecar.telemetry.lean_tracing import LeanSpan
from sidecar.telemetry.otlp import TraceEncoder, native_span_field
from sidecar.telemetry.settings import OtlpTarget

log = logging.getLogger(__name__)

LOG_EVERY_S = 30.0


class DropCounter:
    """Counts what telemetry could not deliver, by (signal, reason); logs each kind rate-limited."""

    def __init__(self, log_every_s: float = LOG_EVERY_S) -> None:
        self._lock = threading.Lock()
        self.counts: dict[tuple[str, str], int] = {}
        self._unlogged: dict[tuple[str, str], int] = {}
        self._last_log: dict[tuple[str, str], float] = {}
        self._log_every_s = log_every_s

    def add(self, signal: str, reason: str, n: int, detail: str = "") -> None:
        if n <= 0:
            return
        key = (signal, reason)
        now = time.monotonic()
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + n
            pending = self._unlogged.get(key, 0) + n
            last = self._last_log.get(key)
            if last is not None and now - last < self._log_every_s:
                self._unlogged[key] = pending
                return
            self._unlogged[key] = 0
            self._last_log[key] = now
        log.warning(
            "telemetry: dropped %d %s (%s)%s; %d in all so far; serving is not affected",
            pending,
            "spans" if signal == "traces" else "metric points",
            reason.replace("_", " "),
            f": {detail}" if detail else "",
            self.counts[key],
        )

    def seed(self, signal: str, *reasons: str) -> None:
        """Report these kinds as 0 from the start, so rate()/increase() see the first drop."""
        with self._lock:
            for reason in reasons:
                self.counts.setdefault((signal, reason), 0)

    def total(self, signal: str | None = None) -> int:
        return sum(n for (s, _), n in self.counts.items() if signal is None or s == signal)

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"signal": s, "reason": r}) for (s, r), n in list(self.counts.items())]


class BoundedSpanProcessor:
    """Batches ended spans to one exporter from one worker thread; never blocks ``on_end``.

    The exporter: ``export(spans) -> bool`` (True: delivered; False or an exception: dropped and
    counted) and ``shutdown()`` (``sidecar.telemetry.otlp``). An exporter with ``at_end(span)``
    (the OTLP ones) gets what that made of each span where it made something (its encoded bytes:
    ``TraceEncoder.at_end``), instead of the span: the queue then holds bytes, not span objects.
    """

    def __init__(
        self,
        exporter: Any,
        drops: DropCounter,
        queue_size: int = 2048,
        batch_size: int = 512,
        schedule_delay_s: float = 5.0,
    ) -> None:
        self._exporter = exporter
        self._at_end = getattr(exporter, "at_end", None)
        self._drops = drops
        self._queue: collections.deque[Any] = collections.deque()  # LeanSpan, or what at_end made of one
        self._queue_size = queue_size
        self._full = f"the span queue holds {queue_size}"
        self._batch_size = batch_size
        self._delay_s = schedule_delay_s
        self._wake = threading.Event()
        # on_end(span): ``_on_end``, or the same in one C call (``_otlp_native.SpanSink``) where the lean
        # span's core is C; where the exporter's at_end is a TraceEncoder's, the sink encodes as that
        # does, and queues the field alone for the encoder's ``bytes_scope``
        native = lean_tracing.native_core()
        encoder = getattr(self._at_end, "__self__", None)
        if not (
            isinstance(encoder, TraceEncoder)
            and getattr(self._at_end, "__func__", None) is TraceEncoder.at_end
            and native_span_field is not None
        ):
            encoder = None
        self._sink = (
            native.SpanSink(self._queue, queue_size, batch_size, self._wake.set, self._refuse, self._at_end, encoder)
            if native is not None
            else None
        )
        self.on_end: Any = self._sink if self._sink is not None else self._on_end
        self._flushed = threading.Condition()
        self._flush_requests = 0
        self._flushes_done = 0
        self._stopping = False
        self.exported = 0
        self._thread = threading.Thread(target=self._run, name="sidecar-span-export", daemon=True)
        self._thread.start()

    def _on_end(self, span: LeanSpan) -> None:
        if self._stopping:
            self._refuse("shutdown")
            return
        queue = self._queue
        if len(queue) >= self._queue_size:
            self._refuse("queue_full")
            return
        at_end = self._at_end
        if at_end is not None:
            queue.append(at_end(span) or span)  # deque.append is atomic; only this method appends
        else:
            queue.append(span)
        if len(queue) == self._batch_size:  # once per batch: the worker then sends everything queued
            self._wake.set()

    def _refuse(self, reason: str) -> None:
        """A span not queued: ``shutdown`` (it ended after the shutdown began) or ``queue_full``."""
        self._drops.add("traces", reason, 1, self._full if reason == "queue_full" else "")

    def _run(self) -> None:
        while True:
            self._wake.wait(self._delay_s)
            self._wake.clear()
            stopping = self._stopping  # read before the export: then no span can be queued after it
            with self._flushed:
                requested = self._flush_requests
            self._export_all()
            with self._flushed:
                self._flushes_done = requested
                self._flushed.notify_all()
            if stopping:
                return

    def _export_all(self) -> None:
        """Export what was queued when the worker woke, in batches of at most ``batch_size``.

        Spans that end meanwhile wait for the next wake-up: draining until the queue is empty would
        send them in a trail of small exports (each OTLP/gRPC call costs ~0.3 ms of CPU whatever its
        size), since the event loop ends a few spans during every export."""
        queue = self._queue
        left = len(queue)
        while left > 0:
            take = min(left, self._batch_size)
            left -= take
            batch = [queue.popleft() for _ in range(take)]
            try:
                result = self._exporter.export(batch)
            except Exception as exc:
                self._drops.add("traces", "export_failed", len(batch), f"{type(exc).__name__}: {exc}")
                continue
            if result:
                self.exported += len(batch)
            else:
                self._drops.add("traces", "export_failed", len(batch), "the exporter reported a failure")

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        with self._flushed:
            self._flush_requests += 1
            target = self._flush_requests
            self._wake.set()
            return self._flushed.wait_for(lambda: self._flushes_done >= target, timeout_millis / 1000)

    def shutdown(self, timeout_s: float = 5.0) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._sink is not None:  # the C sink refuses from now on too
            self._sink.stopping = True
        self._wake.set()
        self._thread.join(timeout_s)
        # A worker still stuck in an export gives up on the rest: what is left is counted as dropped.
        left = len(self._queue)
        self._queue.clear()
        self._drops.add("traces", "shutdown", left, "not exported before the shutdown deadline")
        _shutdown_exporter(self._exporter)


class CountingMetricExporter(MetricExporter):
    """Wraps a metric exporter: failed exports count their points as dropped."""

    def __init__(self, inner: MetricExporter, drops: DropCounter) -> None:
        super().__init__(preferred_temporality=_CUMULATIVE, preferred_aggregation=None)
        self._inner = inner
        self._drops = drops
        self.exports = 0

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        try:
            result = self._inner.export(metrics_data, timeout_millis=timeout_millis)
        except Exception as exc:
            self._drops.add("metrics", "export_failed", _points(metrics_data), f"{type(exc).__name__}: {exc}")
            return MetricExportResult.FAILURE
        if result is MetricExportResult.SUCCESS:
            self.exports += 1
        else:
            self._drops.add("metrics", "export_failed", _points(metrics_data), "the exporter reported a failure")
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        _shutdown_exporter(self._inner, timeout_millis)


def _points(data: MetricsData) -> int:
    return sum(len(m.data.data_points) for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics)


def _shutdown_exporter(exporter: Any, timeout_millis: float = 1000) -> None:
    try:
        try:
            exporter.shutdown(timeout_millis=timeout_millis)
        except TypeError:
            exporter.shutdown()
    except Exception:
        log.debug("telemetry exporter shutdown failed", exc_info=True)


def _cumulative() -> dict[type, AggregationTemporality]:
    from opentelemetry.sdk.metrics import (
        Counter,
        Histogram,
        ObservableCounter,
        ObservableGauge,
        ObservableUpDownCounter,
        UpDownCounter,
    )

    kinds = (Counter, UpDownCounter, Histogram, ObservableCounter, ObservableUpDownCounter, ObservableGauge)
    return dict.fromkeys(kinds, AggregationTemporality.CUMULATIVE)


_CUMULATIVE = _cumulative()


class HistogramMergingReader(PeriodicExportingMetricReader):
    """The SDK's periodic reader, with the sidecar's lean histograms added to every collection."""

    def __init__(self, exporter: MetricExporter, hists: HistogramSet, interval_ms: float, timeout_ms: float) -> None:
        self._hists = hists
        super().__init__(exporter, export_interval_millis=interval_ms, export_timeout_millis=timeout_ms)

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        super()._receive_metrics(self._hists.merge_into(metrics_data), timeout_millis=timeout_millis, **kwargs)


def prometheus_reader(hists: HistogramSet) -> tuple[Any, Any]:
    """A Prometheus reader on a private registry (several sidecars may share a process in tests)."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry

    class _Reader(PrometheusMetricReader):
        def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
            super()._receive_metrics(hists.merge_into(metrics_data), timeout_millis=timeout_millis, **kwargs)

    registry = CollectorRegistry(auto_describe=False)
    return _Reader(registry=registry), registry


def start_prometheus_server(registry: Any, host: str, port: int) -> tuple[Any, int]:
    """Serve ``/metrics`` on a daemon thread; returns (server, bound port)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, server.server_port


def span_exporter(target: OtlpTarget, resource: Mapping[str, Any]) -> Any:
    from sidecar.telemetry.otlp import GrpcSpanExporter, HttpSpanExporter

    return (GrpcSpanExporter if target.protocol == "grpc" else HttpSpanExporter)(target, resource)


def console_metric_exporter() -> MetricExporter:
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

    # sys.stdout as it is now (the SDK's default argument is the one of import time)
    return ConsoleMetricExporter(out=sys.stdout, preferred_temporality=_CUMULATIVE)
