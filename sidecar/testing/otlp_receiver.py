"""An OTLP receiver for tests: the real collector services from opentelemetry-proto, over gRPC and HTTP.

    with OtlpReceiver() as otlp:                      # gRPC on otlp.grpc_endpoint, HTTP on otlp.http_endpoint
        ... point the sidecar's exporter at it ...
        span = otlp.wait_for_span(lambda s: s.name == "sidecar.batch")
        metric = otlp.wait_for_metric("sidecar.inference.requests")

It implements ``opentelemetry.proto.collector.{trace,metrics}.v1`` ``TraceService/Export`` and
``MetricsService/Export`` (what an OpenTelemetry Collector serves on 4317) and the OTLP/HTTP protobuf
paths ``/v1/traces`` and ``/v1/metrics`` (4318), and keeps every request it receives, decoded.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def attributes(kvs: Any) -> dict[str, Any]:
    """OTLP ``KeyValue`` list -> plain dict."""
    out = {}
    for kv in kvs:
        v = kv.value
        which = v.WhichOneof("value")
        out[kv.key] = getattr(v, which) if which else None
    return out


@dataclass(frozen=True)
class ReceivedSpan:
    span: Any  # opentelemetry.proto.trace.v1.Span
    resource: dict[str, Any]
    scope: str
    protocol: str  # "grpc" | "http"

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def attributes(self) -> dict[str, Any]:
        return attributes(self.span.attributes)


@dataclass(frozen=True)
class ReceivedMetric:
    metric: Any  # opentelemetry.proto.metrics.v1.Metric
    resource: dict[str, Any]
    protocol: str

    @property
    def name(self) -> str:
        return self.metric.name

    @property
    def unit(self) -> str:
        return self.metric.unit

    def points(self) -> list[Any]:
        which = self.metric.WhichOneof("data")
        return list(getattr(self.metric, which).data_points) if which else []


class OtlpReceiver:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._lock = threading.Condition()
        self.trace_requests: list[tuple[str, Any]] = []
        self.metric_requests: list[tuple[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._count = 0
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self.grpc_port = 0
        self.http_port = 0

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> OtlpReceiver:
        server = grpc.server(ThreadPoolExecutor(2, thread_name_prefix="otlp-receiver"))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsService(self), server)
        self.grpc_port = server.add_insecure_port(f"{self._host}:0")
        server.start()
        self._grpc = server
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    msg = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                    receiver._received("trace", "http", msg, dict(self.headers))
                    reply = trace_service_pb2.ExportTraceServiceResponse()
                elif self.path == "/v1/metrics":
                    msg = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                    receiver._received("metric", "http", msg, dict(self.headers))
                    reply = metrics_service_pb2.ExportMetricsServiceResponse()
                else:
                    self.send_error(404)
                    return
                data = reply.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer((self._host, 0), Handler)
        self.http_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, name="otlp-http-receiver", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(0).wait(5)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def grpc_endpoint(self) -> str:
        return f"http://{self._host}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://{self._host}:{self.http_port}"

    # -- what was received ------------------------------------------------------------------------
    def _received(self, kind: str, protocol: str, msg: Any, headers: dict[str, str]) -> None:
        with self._lock:
            (self.trace_requests if kind == "trace" else self.metric_requests).append((protocol, msg))
            self.headers.append({k.lower(): v for k, v in headers.items()})
            self._count += 1
            self._lock.notify_all()

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            requests = list(self.trace_requests)
        out = []
        for protocol, req in requests:
            for rs in req.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    out.extend(ReceivedSpan(s, resource, ss.scope.name, protocol) for s in ss.spans)
        return out

    def metrics(self) -> list[ReceivedMetric]:
        """Every metric of every export, oldest first (metrics are cumulative: the last one is the total)."""
        with self._lock:
            requests = list(self.metric_requests)
        out = []
        for protocol, req in requests:
            for rm in req.resource_metrics:
                resource = attributes(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    out.extend(ReceivedMetric(m, resource, protocol) for m in sm.metrics)
        return out

    def latest_metric(self, name: str) -> ReceivedMetric | None:
        found = [m for m in self.metrics() if m.name == name]
        return found[-1] if found else None

    def wait_for(self, condition: Callable[[], Any], timeout_s: float = 10.0) -> Any:
        """Wait until ``condition()`` is truthy (re-checked after every export received); return its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                seen = self._count
            value = condition()
            if value:
                return value
            with self._lock:
                left = deadline - time.monotonic()
                if left <= 0 or not self._lock.wait_for(lambda seen=seen: self._count != seen, left):
                    raise TimeoutError("the OTLP receiver did not receive what was expected in time")

    def wait_for_span(self, match: Callable[[ReceivedSpan], bool], timeout_s: float = 10.0) -> ReceivedSpan:
        return self.wait_for(lambda: next((s for s in self.spans() if match(s)), None), timeout_s)

    def wait_for_metric(
        self, name: str, match: Callable[[ReceivedMetric], bool] = lambda m: True, timeout_s: float = 10.0
    ) -> ReceivedMetric:
        return self.wait_for(
            lambda: next((m for m in reversed(self.metrics()) if m.name == name and match(m)), None), timeout_s
        )


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:
        self._receiver._received("trace", "grpc", request, dict(context.invocation_metadata()))
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:
        self._receiver._received("metric", "grpc", request, dict(context.invocation_metadata()))
        return metrics_service_pb2.ExportMetricsServiceResponse()
