"""The telemetry stage: builds the OpenTelemetry pieces the settings ask for, and nothing else.

    settings = resolve(config.telemetry, os.environ)    # OTEL_* read once, here
    telemetry = Telemetry(settings)
    telemetry.start(repository)                          # providers, exporters, samplers, /metrics
    ...
    telemetry.shutdown()                                 # flush under settings.shutdown_timeout_s

Metrics use the SDK's ``MeterProvider`` (with the lean histograms merged in); traces use the lean
tracer (``lean_tracing``: API spans that only record) with its own OTLP encoder (``otlp``) behind a
bounded queue (``export.BoundedSpanProcessor``), because the SDK's spans cost the request path several
times more. With telemetry off (``enabled = false`` or ``OTEL_SDK_DISABLED=true``) or with no
destination for a signal, no object of that signal exists: the request path sees ``tracer is None``
and ``rpc_durations is None`` and the API's non-recording spans.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sidecar import __version__
from sidecar.telemetry import catalog, tracing
from sidecar.telemetry.export import (
    BoundedSpanProcessor,
    CountingMetricExporter,
    DropCounter,
    HistogramMergingReader,
    console_metric_exporter,
    prometheus_reader,
    span_exporter,
    start_prometheus_server,
)
from sidecar.telemetry.gpu import GpuSampler
from sidecar.telemetry.histograms import HistogramFamily, HistogramSet
from sidecar.telemetry.host import HostMetrics
from sidecar.telemetry.model_metrics import ModelMetrics, create_observable
from sidecar.telemetry.otlp_metrics import metric_exporter
from sidecar.telemetry.settings import TelemetrySettings

log = logging.getLogger(__name__)


class Telemetry:
    def __init__(self, settings: TelemetrySettings) -> None:
        self.settings = settings
        self.drops = DropCounter()
        self.tracer: Any = None  # the lean tracer for server spans; None when tracing is off
        self.rpc_durations: HistogramFamily | None = None  # None when metrics are off
        self.tracer_provider: Any = None
        self.meter_provider: Any = None
        self.meter: Any = None
        self.histograms: HistogramSet | None = None
        self.model_metrics: ModelMetrics | None = None
        self.gpu: GpuSampler | None = None
        self.prometheus_port: int | None = None
        self.span_processors: list[BoundedSpanProcessor] = []
        self.metric_exporters: list[CountingMetricExporter] = []
        self._prometheus_server: Any = None
        self._started = False

    @property
    def active(self) -> bool:
        return self.tracer is not None or self.rpc_durations is not None

    # -- start ------------------------------------------------------------------------------------
    def start(self, repository: Any = None) -> None:
        s = self.settings
        self._started = True
        if not s.enabled:
            log.info("telemetry: off")
            return
        from opentelemetry.sdk.resources import Resource

        resource = Resource({**s.resource, "telemetry.sdk.name": "opentelemetry", "telemetry.sdk.language": "python"})
        if s.metrics:
            self._start_metrics(resource, repository)
        if s.tracing:
            self._start_tracing(dict(resource.attributes))
        for line in self.destinations():
            log.info("telemetry %s", line)

    def _start_metrics(self, resource: Any, repository: Any) -> None:
        from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider

        s = self.settings
        hists = HistogramSet(resource)
        readers: list[Any] = []
        if s.prometheus_port >= 0:
            reader, registry = prometheus_reader(hists)
            try:
                self._prometheus_server, self.prometheus_port = start_prometheus_server(
                    registry, s.prometheus_host, s.prometheus_port
                )
                readers.append(reader)
            except OSError as exc:
                log.error(
                    "telemetry: cannot serve Prometheus metrics on %s:%d (%s); inference serving continues",
                    s.prometheus_host,
                    s.prometheus_port,
                    exc.strerror or exc,
                )
        exporters = []
        if s.metrics_otlp is not None:
            exporters.append(metric_exporter(s.metrics_otlp))
        if s.metrics_console:
            exporters.append(console_metric_exporter())
        if exporters:
            self.drops.seed("metrics", "export_failed")
        for exporter in exporters:
            counting = CountingMetricExporter(exporter, self.drops)
            self.metric_exporters.append(counting)
            readers.append(
                HistogramMergingReader(counting, hists, s.metric_export_interval_ms, s.metric_export_timeout_ms)
            )
        if not readers:
            return
        self.meter_provider = MeterProvider(
            metric_readers=readers,
            resource=resource,
            shutdown_on_exit=False,
            exemplar_filter=AlwaysOffExemplarFilter(),
        )
        self.meter = meter = self.meter_provider.get_meter("sidecar", __version__)
        self.histograms = hists
        self.rpc_durations = hists.family(catalog.RPC_DURATION, scale=1e-9)
        create_observable(meter, catalog.TELEMETRY_DROPPED, self.drops.observe)
        if repository is not None:
            self.model_metrics = ModelMetrics(meter, hists)
            repository.on_change(self.model_metrics.attach)
            for mv in repository.all_versions():
                self.model_metrics.attach(mv)
        if s.host_metrics:
            HostMetrics(meter)
        if s.gpu_metrics:
            self.gpu = GpuSampler.start(meter, s.gpu_sample_interval_s)

    def _start_tracing(self, resource: dict[str, Any]) -> None:
        from sidecar.telemetry.lean_tracing import LeanTracerProvider
        from sidecar.telemetry.otlp import ConsoleSpanExporter
        from sidecar.telemetry.sampling import decision

        s = self.settings
        provider = LeanTracerProvider(decision(s.sampler, s.sampler_ratio), resource)
        exporters = []
        if s.traces_otlp is not None:
            exporters.append(span_exporter(s.traces_otlp, resource))
        if s.traces_console:
            exporters.append(ConsoleSpanExporter(resource))
        if exporters:
            self.drops.seed("traces", "queue_full", "export_failed")
        for exporter in exporters:
            processor = BoundedSpanProcessor(
                exporter, self.drops, s.span_queue_size, s.span_batch_size, s.span_schedule_delay_ms / 1000.0
            )
            self.span_processors.append(processor)
            provider.add_span_processor(processor)
        self.tracer_provider = provider
        self.tracer = provider.get_tracer("sidecar.protocol", __version__)
        tracing.activate(provider)

    def observe_monitoring(self, monitoring: Any) -> None:
        """Export drift, data-quality and alert metrics from ``monitoring.snapshot()`` (the monitoring stage)."""
        if self.histograms is not None and monitoring is not None:
            from sidecar.telemetry.drift_metrics import DriftMetrics

            DriftMetrics(self.histograms, monitoring.snapshot)

    def observe_shadows(self, mirror: Any) -> None:
        """Export each shadow version's comparison with its primary (the router's ``ShadowMirror``)."""
        if self.histograms is not None and mirror is not None:
            from sidecar.telemetry.shadow_metrics import ShadowMetrics

            ShadowMetrics(self.histograms, mirror)

    def observe_ingest(self, ingest: Any) -> None:
        """Export how many calls ingest workers relayed and how many run (``sidecar.ingest``)."""
        if self.meter is None or ingest is None:
            return
        from opentelemetry.metrics import Observation

        def relayed(options: Any) -> list[Observation]:
            shared = ingest.shared
            return [
                Observation(shared, {"transport": "shared_memory"}),
                Observation(ingest.relayed - shared, {"transport": "socket"}),
            ]

        create_observable(self.meter, catalog.INGEST_RELAYED, relayed)
        create_observable(self.meter, catalog.INGEST_WORKERS, lambda options: [Observation(len(ingest.pids))])

    def destinations(self) -> list[str]:
        lines = self.settings.destinations()
        if self.settings.prometheus_port >= 0 and self.prometheus_port is None and self.settings.enabled:
            lines[-1] = lines[-1].replace("Prometheus scrape endpoint", "Prometheus scrape endpoint (NOT bound)")
        elif self.prometheus_port is not None and self.prometheus_port != self.settings.prometheus_port:
            lines[-1] = lines[-1].replace(f":{self.settings.prometheus_port}/", f":{self.prometheus_port}/")
        return lines

    # -- flush / stop -----------------------------------------------------------------------------
    def force_flush(self, timeout_s: float = 5.0) -> bool:
        """Export finished spans and collect/export metrics now (tests, the demo, before exit)."""
        ok = True
        for p in self.span_processors:
            ok = p.force_flush(int(timeout_s * 1000)) and ok
        if self.meter_provider is not None and self.metric_exporters:
            ok = self.meter_provider.force_flush(int(timeout_s * 1000)) and ok
        return ok

    def shutdown(self) -> None:
        """Flush and stop everything, bounded by ``shutdown_timeout_s``. Blocking: run it off the loop."""
        if not self._started:
            return
        self._started = False
        deadline = time.monotonic() + self.settings.shutdown_timeout_s

        def left() -> float:
            return max(0.05, deadline - time.monotonic())

        if self.model_metrics is not None:
            self.model_metrics.detach_all()
        if self.tracer_provider is not None:
            tracing.deactivate(self.tracer_provider)
            for p in self.span_processors:
                p.shutdown(left())
            self.tracer = None
        if self.gpu is not None:
            self.gpu.stop()
        if self.meter_provider is not None:
            try:
                self.meter_provider.shutdown(timeout_millis=left() * 1000)
            except Exception:
                log.warning("telemetry: metric shutdown did not finish cleanly", exc_info=True)
            self.rpc_durations = None
        if self._prometheus_server is not None:
            self._prometheus_server.shutdown()
            self._prometheus_server.server_close()
            self._prometheus_server = None
        dropped = self.drops.total()
        if dropped:
            log.info("telemetry: %d item(s) dropped in all during this run", dropped)
