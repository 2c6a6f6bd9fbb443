"""OTLP metric export: the SDK's collected ``MetricsData`` encoded straight to protobuf bytes.

The SDK's OTLP metric exporters build one protobuf object per metric, data point, attribute and value
(``encode_metrics``): ~6 ms of CPU per export for an MLP with a drift profile (~600 points, most of them
per feature and bin), on the reader's thread, holding the GIL the event loop needs. ``encode_request``
writes the ``ExportMetricsServiceRequest`` wire format (opentelemetry-proto ``collector/metrics/v1``)
in one pass: resources and scopes once per request, attribute fields from the trace encoder's bounded
caches (feature, bin, model and version names repeat every export), numbers with ``struct``. Data it
does not model (exponential histograms, exemplars) makes it hand the whole request to the SDK's
encoder, so nothing is ever lost. The tests compare its bytes, decoded, with the SDK's message.

Sent with the transports of the trace exporters (``otlp``: endpoint, headers, timeout, gzip, retries).
"""

from __future__ import annotations

import struct
import time
from typing import Any

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    MetricExportResult,
    MetricsData,
    Sum,
)

from sidecar.protobuf_wire import varint
from sidecar.telemetry.otlp import (
    GrpcTransport,
    HttpTransport,
    _Attributes,
    _field,
    _key_value,
    _string,
)
from sidecar.telemetry.settings import OtlpTarget

GRPC_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"

_BLOCKS_LIMIT = 16_384


class _AttributeBlocks:
    """A point's encoded attribute fields, kept per attributes object.

    The sidecar's series keep their attribute mappings from one collection to the next (the SDK's
    aggregations, the histogram families, and ``DriftMetrics``'s per feature and bin), so the fields
    are encoded once per series instead of once per point and export: a drift profile has hundreds of
    points. Keyed by ``id()`` and checked by identity (the mapping is kept with its bytes, so its id is
    not reused while it is here); attribute mappings are never changed once made (the SDK's
    convention too). Bounded: cleared when full."""

    __slots__ = ("_attributes", "_blocks")

    def __init__(self, tag: bytes) -> None:
        self._attributes = _Attributes(tag)
        self._blocks: dict[int, tuple[Any, bytes]] = {}

    def block(self, attributes: Any) -> bytes:
        hit = self._blocks.get(id(attributes))
        if hit is not None and hit[0] is attributes:
            return hit[1]
        parts: list[bytes] = []
        if attributes:
            self._attributes.encode(attributes, parts)
        block = b"".join(parts)
        if len(self._blocks) >= _BLOCKS_LIMIT:
            self._blocks.clear()
        self._blocks[id(attributes)] = (attributes, block)
        return block


_NUMBER_ATTRIBUTES = _AttributeBlocks(b"\x3a")  # NumberDataPoint.attributes (7)
_HISTOGRAM_ATTRIBUTES = _AttributeBlocks(b"\x4a")  # HistogramDataPoint.attributes (9)
_number_block = _NUMBER_ATTRIBUTES.block
_TIMES = struct.Struct("<BQBQ")  # start_time_unix_nano (2), time_unix_nano (3): fixed64 in both point kinds
_TIME = struct.Struct("<BQ")
_DOUBLE = struct.Struct("<Bd")
_INT64 = struct.Struct("<Bq")  # NumberDataPoint.as_int (6): sfixed64
_COUNT = struct.Struct("<BQ")  # HistogramDataPoint.count (4): fixed64


class Unsupported(Exception):
    """Data this encoder does not model; the SDK's encoder takes the request."""


def encode_request(data: MetricsData) -> bytes:
    """``ExportMetricsServiceRequest`` bytes for ``data`` (raises ``Unsupported``)."""
    out = []
    for rm in data.resource_metrics:
        resource = rm.resource
        body = [_field(b"\x0a", b"".join(_field(b"\x0a", _key_value(k, v)) for k, v in resource.attributes.items()))]
        for sm in rm.scope_metrics:
            scope = sm.scope
            head = _string(b"\x0a", scope.name) + (_string(b"\x12", scope.version) if scope.version else b"")
            parts = [_field(b"\x0a", head)]  # ScopeMetrics.scope (1)
            for metric in sm.metrics:
                parts.append(_field(b"\x12", _metric(metric)))  # ScopeMetrics.metrics (2)
                time.sleep(0)  # lets go of the GIL between metrics: the event loop waits less for it
            if sm.schema_url:
                parts.append(_string(b"\x1a", sm.schema_url))
            body.append(_field(b"\x12", b"".join(parts)))  # ResourceMetrics.scope_metrics (2)
        if rm.schema_url:
            body.append(_string(b"\x1a", rm.schema_url))
        out.append(_field(b"\x0a", b"".join(body)))  # ExportMetricsServiceRequest.resource_metrics (1)
    return b"".join(out)


def _metric(metric: Any) -> bytes:
    parts = [_string(b"\x0a", metric.name)]
    if metric.description:
        parts.append(_string(b"\x12", metric.description))
    if metric.unit:
        parts.append(_string(b"\x1a", metric.unit))
    data = metric.data
    kind = type(data)
    if kind is Sum:
        points = [_field(b"\x0a", _number(p, True)) for p in data.data_points]
        tail = b"\x10" + varint(int(data.aggregation_temporality)) + (b"\x18\x01" if data.is_monotonic else b"")
        parts.append(_field(b"\x3a", b"".join(points) + tail))  # Metric.sum (7)
    elif kind is Gauge:
        points = [_field(b"\x0a", _number(p, False)) for p in data.data_points]
        parts.append(_field(b"\x2a", b"".join(points)))  # Metric.gauge (5)
    elif kind is Histogram:
        points = [_field(b"\x0a", _histogram(p)) for p in data.data_points]
        tail = b"\x10" + varint(int(data.aggregation_temporality))
        parts.append(_field(b"\x4a", b"".join(points) + tail))  # Metric.histogram (9)
    else:
        raise Unsupported(kind.__name__)
    return b"".join(parts)


def _number(point: Any, with_start: bool) -> bytes:
    if point.exemplars:
        raise Unsupported("exemplars")
    start = point.start_time_unix_nano if with_start else 0
    value = point.value
    return b"".join(
        (
            _number_block(point.attributes),
            _TIMES.pack(0x11, start, 0x19, point.time_unix_nano) if start else _TIME.pack(0x19, point.time_unix_nano),
            _INT64.pack(0x31, value) if isinstance(value, int) else _DOUBLE.pack(0x21, value),
        )
    )


def _histogram(point: Any) -> bytes:
    if point.exemplars:
        raise Unsupported("exemplars")
    parts = [_HISTOGRAM_ATTRIBUTES.block(point.attributes)]
    parts.append(_TIMES.pack(0x11, point.start_time_unix_nano, 0x19, point.time_unix_nano))
    parts.append(_COUNT.pack(0x21, point.count))
    parts.append(_DOUBLE.pack(0x29, point.sum))
    counts = point.bucket_counts
    if counts:
        parts.append(_field(b"\x32", struct.pack(f"<{len(counts)}Q", *counts)))  # packed fixed64 (6)
    bounds = point.explicit_bounds
    if bounds:
        parts.append(_field(b"\x3a", struct.pack(f"<{len(bounds)}d", *bounds)))  # packed double (7)
    if point.min is not None:
        parts.append(_DOUBLE.pack(0x59, point.min))  # min (11)
    if point.max is not None:
        parts.append(_DOUBLE.pack(0x61, point.max))  # max (12)
    return b"".join(parts)


def _sdk_bytes(data: MetricsData) -> bytes:
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics

    return encode_metrics(data).SerializeToString()


class LeanMetricExporter:
    """export(MetricsData) -> MetricExportResult with the lean encoder; raises what the transport raises."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.sdk_encoded = 0  # requests the SDK's encoder had to take (unsupported data)

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        try:
            body = encode_request(metrics_data)
        except Unsupported:
            self.sdk_encoded += 1
            body = _sdk_bytes(metrics_data)
        return MetricExportResult.SUCCESS if self._transport.send(body) else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._transport.shutdown()


def metric_exporter(target: OtlpTarget) -> LeanMetricExporter:
    """OTLP over gRPC or HTTP/protobuf, as ``target`` says."""
    if target.protocol == "grpc":
        return LeanMetricExporter(GrpcTransport(target, GRPC_METHOD))
    return LeanMetricExporter(HttpTransport(target))
