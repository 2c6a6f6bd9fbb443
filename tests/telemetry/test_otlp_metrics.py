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


def test_attribute_blocks_are_kept_per_mapping_and_never_given_to_another():
    from sidecar.telemetry.otlp_metrics import _AttributeBlocks

    blocks = _AttributeBlocks(b"\x3a")
    first = {"model.name": "mlp", "bin": "3"}
    encoded = blocks.block(first)
    assert blocks.block(first) is encoded  # the same mapping: its bytes, encoded once
    for i in range(200):  # new mappings, freed at once: their ids are reused, their bytes never
        other = {"model.name": "mlp", "bin": str(i)}
        fresh = _AttributeBlocks(b"\x3a").block(other)
        assert blocks.block(other) == fresh
        del other
    assert blocks.block({}) == b""


def test_a_drift_series_keeps_its_attribute_mapping_from_one_collection_to_the_next():
    from types import SimpleNamespace

    from sidecar.telemetry.drift_metrics import DriftMetrics

    feature = SimpleNamespace(
        feature="f0", kind="numeric", bins=("lo", "b0", "hi", "nan", "inf"), cumulative=(1, 2, 3, 0, 0), reference=()
    )
    version = SimpleNamespace(
        model="mlp",
        version="1.0.0",
        features=(feature,),
        has_reference=False,
        schema_violations_total=0,
        last_window=None,
        alerts=(),
    )
    hists = HistogramSet(RESOURCE)
    drift = DriftMetrics(hists, lambda: SimpleNamespace(versions=(version,)))
    first, second = list(drift._bins()), list(drift._bins())
    assert [count for count, _ in first] == [1, 2, 3, 0, 0]
    assert [a["bin"] for _, a in first] == list(feature.bins)
    assert all(a is b for (_, a), (_, b) in zip(first, second, strict=True))
    assert first[0][1] == {"model.name": "mlp", "model.version": "1.0.0", "feature": "f0", "bin": "lo"}
    for _ in range(2):  # the second time from the kept blocks: still the SDK's message
        data = hists.merge_into(None)
        assert ExportMetricsServiceRequest.FromString(encode_request(data)) == encode_metrics(data)


def test_points_are_made_without_the_dataclass_init_and_equal_the_sdks():
    from opentelemetry.sdk.metrics.export import NumberDataPoint

    from sidecar.telemetry import histograms

    assert histograms._number_point is histograms._fast_number_point  # the check at import passed here
    made = histograms._number_point({"feature": "f0"}, 5, 6, 7)
    assert made == NumberDataPoint({"feature": "f0"}, 5, 6, 7) and made.exemplars == []
