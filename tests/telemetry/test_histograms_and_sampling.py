"""The lean histograms against numpy, the link-aware sampler, GPU readings, the drop counter."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import Link, SpanContext, TraceFlags

from sidecar.telemetry import catalog
from sidecar.telemetry.export import DropCounter
from sidecar.telemetry.gpu import GpuSampler
from sidecar.telemetry.histograms import SCOPE, HistogramSet
from sidecar.telemetry.sampling import configured_sampler


def test_buckets_match_numpy_with_upper_inclusive_edges():
    hists = HistogramSet(Resource({}))
    fam = hists.family(catalog.QUEUE_DURATION, scale=1e-9)
    series = fam.series(**{"model.name": "m", "model.version": "1"})
    rng = np.random.default_rng(0)
    values_ns = np.concatenate([rng.integers(0, 20_000_000_000, 5000), [100_000, 250_000, 10_000_000_000]])
    for v in values_ns:
        series.record(int(v))
    (point,) = fam.points(0, 1)
    edges_ns = np.array(catalog.DURATION_BUCKETS_S) * 1e9
    # Bucket i holds (edge[i-1], edge[i]]: count by <= comparisons, as Prometheus' "le" does.
    cumulative = [(values_ns <= e).sum() for e in edges_ns] + [len(values_ns)]
    assert list(np.cumsum(point.bucket_counts)) == cumulative
    assert point.count == len(values_ns)
    assert abs(point.sum - values_ns.sum() / 1e9) < 1e-6
    assert point.min == values_ns.min() / 1e9 and point.max == values_ns.max() / 1e9
    assert list(point.explicit_bounds) == list(catalog.DURATION_BUCKETS_S)
    assert point.attributes == {"model.name": "m", "model.version": "1"}


def test_series_are_bound_once_and_removed_with_their_version():
    hists = HistogramSet(Resource({}))
    fam = hists.family(catalog.BATCH_ROWS)
    a = fam.series(**{"model.name": "m", "model.version": "1"})
    assert fam.series(**{"model.name": "m", "model.version": "1"}) is a
    a.record(3)
    assert [m.name for m in hists.metrics()] == ["sidecar.batch.rows"]
    fam.remove(a)
    assert hists.metrics() == []


def test_merged_into_the_sdk_scope_of_a_real_collection():
    reader = InMemoryMetricReader()
    resource = Resource({"service.name": "t"})
    provider = MeterProvider(metric_readers=[reader], resource=resource)
    provider.get_meter("sidecar", SCOPE.version).create_counter("c").add(1)
    hists = HistogramSet(resource)
    hists.family(catalog.BATCH_ROWS).series(**{"model.name": "m", "model.version": "1"}).record(8)
    merged = hists.merge_into(reader.get_metrics_data())
    (rm,) = merged.resource_metrics
    (scope,) = rm.scope_metrics  # one "sidecar" scope: OTLP encoders key scopes by name
    assert sorted(m.name for m in scope.metrics) == ["c", "sidecar.batch.rows"]
    provider.shutdown()


def _ctx(sampled: bool, trace_id: int = 0x1234, span_id: int = 0x99) -> SpanContext:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    return SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags)


def test_sampler_records_a_batch_root_span_linked_to_a_sampled_request():
    sampler = configured_sampler("parentbased_traceidratio", 0.0)  # would record no root span on its own
    root = trace.set_span_in_context(trace.INVALID_SPAN)
    linked = sampler.should_sample(root, 0xABC, "sidecar.batch", links=[Link(_ctx(True))])
    unlinked = sampler.should_sample(root, 0xABC, "sidecar.batch", links=[Link(_ctx(False))])
    assert linked.decision is Decision.RECORD_AND_SAMPLE
    assert unlinked.decision is Decision.DROP
    # A child keeps following its parent's decision, links or not.
    parent = trace.set_span_in_context(trace.NonRecordingSpan(_ctx(False)))
    assert sampler.should_sample(parent, 0x1234, "x", links=[Link(_ctx(True))]).decision is Decision.DROP


class _HardwareDouble:
    """Stands in for the NVML library on this GPU-less test machine (the real one is exercised by
    bench/bench_telemetry.py --gpu on a GPU host): fixed readings for two boards, one without power."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self) -> None:
        self.calls = 0

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h}"

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUtilizationRates(self, h):
        self.calls += 1
        return SimpleNamespace(gpu=87, memory=40)

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=30 * 2**30, total=80 * 2**30, free=50 * 2**30)

    def nvmlDeviceGetPowerUsage(self, h):
        if h == 1:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return 312_500

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 61


def test_gpu_readings_become_hw_instruments():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    nvml = _HardwareDouble()
    sampler = GpuSampler.start(provider.get_meter("sidecar"), 3600.0, nvml=nvml)
    try:
        data = reader.get_metrics_data()
        metrics = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
        points = {name: {p.attributes["hw.id"]: p for p in m.data.data_points} for name, m in metrics.items()}
        assert points["hw.gpu.utilization"]["GPU-0"].value == 0.87
        assert points["hw.gpu.memory.utilization"]["GPU-1"].value == 0.40
        assert points["hw.gpu.memory.usage"]["GPU-0"].value == 30 * 2**30
        assert points["hw.gpu.memory.limit"]["GPU-0"].value == 80 * 2**30
        assert points["hw.power"]["GPU-0"].value == 312.5 and "GPU-1" not in points["hw.power"]
        assert points["hw.temperature"]["GPU-1"].value == 61.0
        attrs = points["hw.power"]["GPU-0"].attributes
        assert attrs == {"hw.id": "GPU-0", "hw.name": "NVIDIA H100 80GB HBM3", "hw.vendor": "NVIDIA", "hw.type": "gpu"}
        assert metrics["hw.gpu.memory.usage"].unit == "By" and metrics["hw.temperature"].unit == "Cel"
        calls = nvml.calls
        reader.get_metrics_data()
        assert nvml.calls == calls  # collections read the sampler's snapshot, never NVML
    finally:
        sampler.stop()
        provider.shutdown()


def test_drop_counter_counts_everything_and_logs_rate_limited(caplog):
    caplog.set_level(logging.WARNING, logger="sidecar.telemetry.export")
    drops = DropCounter(log_every_s=3600)
    drops.seed("traces", "queue_full")
    for _ in range(100):
        drops.add("traces", "queue_full", 1)
    drops.add("metrics", "export_failed", 7)
    assert drops.counts == {("traces", "queue_full"): 100, ("metrics", "export_failed"): 7}
    assert drops.total("traces") == 100 and drops.total() == 107
    assert len(caplog.records) == 2  # one line per kind, not one per drop
    observed = {tuple(sorted(o.attributes.items())): o.value for o in drops.observe(None)}
    assert observed[(("reason", "queue_full"), ("signal", "traces"))] == 100


def test_observed_instruments_export_as_sums_and_gauges_through_a_reader():
    hists = HistogramSet(Resource({}))
    bins = [(5, {"feature": "f0", "bin": "0"}), (7, {"feature": "f0", "bin": "1"})]
    hists.observe(catalog.FEATURE_BIN_COUNT, lambda: bins)
    hists.observe(catalog.DRIFT_PSI, lambda: [(0.25, {"feature": "f0"})])
    hists.observe(catalog.ALERTS_ACTIVE, lambda: [])  # nothing observed: no metric at all
    metrics = {m.name: m for m in hists.merge_into(None).resource_metrics[0].scope_metrics[0].metrics}
    assert set(metrics) == {catalog.FEATURE_BIN_COUNT.name, catalog.DRIFT_PSI.name}
    counts = metrics[catalog.FEATURE_BIN_COUNT.name]
    assert counts.unit == catalog.FEATURE_BIN_COUNT.unit
    assert counts.data.is_monotonic and counts.data.aggregation_temporality.name == "CUMULATIVE"
    assert [(p.value, p.attributes) for p in counts.data.data_points] == bins
    assert all(p.start_time_unix_nano == hists.start_ns < p.time_unix_nano for p in counts.data.data_points)
    (psi,) = metrics[catalog.DRIFT_PSI.name].data.data_points
    assert type(metrics[catalog.DRIFT_PSI.name].data).__name__ == "Gauge" and psi.value == 0.25
