"""The lean OTLP metric encoder against the SDK's (the official message), and its exporters end to end."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.metrics import Observation
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from sidecar.telemetry import catalog
from sidecar.telemetry.histograms import HistogramSet
from sidecar.telemetry.otlp_metrics import encode_request, metric_exporter
from sidecar.telemetry.settings import OtlpTarget
from sidecar.testing.otlp_receiver import OtlpReceiver

RESOURCE = Resource({"service.name": "metrics-test", "service.instance.id": "i-1", "pid": 42, "ratio": 0.5})


def _collect(views: tuple = ()) -> object:
    """One collection of every instrument kind the sidecar uses, with str/int/float/bool attributes,
    and the sidecar's own histograms merged in as the readers do."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=RESOURCE, views=list(views), shutdown_on_exit=False)
    meter = provider.get_meter("sidecar", "1.2.3")
    requests = meter.create_counter("sidecar.inference.requests", unit="{request}", description="answered")
    requests.add(3, {"model.name": "mlp", "model.version": "1.0.0", "outcome": "success"})
    requests.add(1, {"model.name": "mlp", "model.version": "1.0.0", "outcome": "failure"})
    depth = meter.create_up_down_counter("sidecar.inference.queue.depth", unit="{request}")
    depth.add(-2, {"model.name": "mlp", "ok": True})
    meter.create_observable_gauge(
        "sidecar.drift.psi", [lambda options: [Observation(0.125, {"feature": "f0", "bin": 3})]], unit="1"
    )
    meter.create_observable_gauge("process.thread.count", [lambda options: [Observation(7)]])
    meter.create_histogram("sdk.histogram", unit="s").record(0.25, {"k": "v"})
    hists = HistogramSet(RESOURCE)
    family = hists.family(catalog.RPC_DURATION, scale=1e-9)
    family.series(**{"rpc.system.name": "grpc", "rpc.method": "m", "rpc.status_code": "OK"}).record(1_500_000)
    family.series(**{"rpc.system.name": "grpc", "rpc.method": "m", "rpc.status_code": "UNKNOWN"}).record(40_000_000)
    data = hists.merge_into(reader.get_metrics_data())
    provider.shutdown()
    return data


def test_lean_encoding_is_the_sdk_message():
    data = _collect()
    lean = ExportMetricsServiceRequest.FromString(encode_request(data))
    reference = encode_metrics(data)
    names = [m.name for rm in lean.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    assert {"sidecar.inference.requests", "sidecar.drift.psi", "rpc.server.call.duration"} <= set(names)
    assert lean == reference


def test_unsupported_data_goes_through_the_sdk_encoder_and_arrives():
    exponential = View(instrument_name="sdk.histogram", aggregation=ExponentialBucketHistogramAggregation())
    data = _collect((exponential,))
    with OtlpReceiver() as otlp:
        for protocol, endpoint in (("grpc", otlp.grpc_endpoint), ("http/protobuf", otlp.http_endpoint + "/v1/metrics")):
            exporter = metric_exporter(OtlpTarget(protocol, endpoint, (("x-tenant", "t1"),), 5.0, True, "gzip"))
            try:
                assert exporter.export(data) is MetricExportResult.SUCCESS
                assert exporter.sdk_encoded == 1
                exporter.export(_collect())
                assert exporter.sdk_encoded == 1  # the usual data: the lean encoder
            finally:
                exporter.shutdown()
        received = otlp.metrics()
        headers = otlp.headers
    by_protocol = {(m.protocol, m.name) for m in received}
    for protocol in ("grpc", "http"):
        assert (protocol, "sdk.histogram") in by_protocol and (protocol, "sidecar.inference.requests") in by_protocol
    assert all(h.get("x-tenant") == "t1" for h in headers)
