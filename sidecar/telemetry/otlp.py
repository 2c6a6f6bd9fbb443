"""OTLP trace export of lean spans: the protobuf encoded directly, sent over gRPC or HTTP/protobuf.

The SDK's path (``ReadableSpan`` -> ``encode_spans`` builds one protobuf object per span, attribute and
value) costs ~25 us per span on the export thread, all of it holding the GIL the event loop needs.
``encode_request`` writes the ``ExportTraceServiceRequest`` wire format (opentelemetry-proto
``collector/trace/v1``) itself, in one pass per batch: the resource and each instrumentation scope are
encoded once per exporter, ids and timestamps with ``int.to_bytes``/``struct``, and each
(key, string value) attribute once per process (a bounded cache: span names, methods, model names and
versions repeat). The tests decode what it writes with the official generated classes.

Transports honour the same settings as the SDK exporters (``OtlpTarget``: endpoint, headers, timeout,
insecure, gzip compression) and retry transient failures (gRPC UNAVAILABLE / RESOURCE_EXHAUSTED, HTTP
429/502/503/504, connection errors) with the SDK's backoff within the per-export timeout; whatever
still fails is the caller's to count as dropped.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import random
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

from sidecar.protobuf_wire import varint
from sidecar.telemetry.lean_tracing import LeanSpan, Scope, load_native
from sidecar.telemetry.settings import OtlpTarget

log = logging.getLogger(__name__)

GRPC_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_KIND = {  # Span.kind (field 6, varint): SPAN_KIND_INTERNAL = 1 ... CONSUMER = 5
    SpanKind.INTERNAL: b"\x30\x01",
    SpanKind.SERVER: b"\x30\x02",
    SpanKind.CLIENT: b"\x30\x03",
    SpanKind.PRODUCER: b"\x30\x04",
    SpanKind.CONSUMER: b"\x30\x05",
}
_STATUS_CODE = {StatusCode.OK: b"\x18\x01", StatusCode.ERROR: b"\x18\x02"}  # Status.code (field 3)
# Span.flags (field 16, fixed32): W3C flags (sampled) | SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE [| IS_REMOTE]
_FLAGS_LOCAL_PARENT = b"\x85\x01" + struct.pack("<I", 0x101)
_FLAGS_REMOTE_PARENT = b"\x85\x01" + struct.pack("<I", 0x301)
# Span.links (13) holding a 33-byte Link (trace id, span id, flags), then its trace id field head
_BARE_LINK = b"\x6a\x21\x0a\x10"
_LINK_FLAGS = {False: b"\x35" + struct.pack("<I", 0x101), True: b"\x35" + struct.pack("<I", 0x301)}  # Link.flags
_TIMES = struct.Struct("<BQBQ")  # Span.start_time_unix_nano (7) and end_time_unix_nano (8), fixed64
_DOUBLE = struct.Struct("<Bd")
_F64 = struct.Struct("<d")
_NO_STATE = DEFAULT_TRACE_STATE  # what a span context holds without a trace state
_FIXED64 = struct.Struct("<BQ")
_CACHE_LIMIT = 4096
_INT64 = (1 << 64) - 1


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: ``tag`` (one or more bytes), length, payload."""
    return tag + varint(len(payload)) + payload


def _string(tag: bytes, text: str) -> bytes:
    return _field(tag, text.encode("utf-8", "surrogatepass"))


def _any_value(value: Any) -> bytes:
    """An ``AnyValue`` message body."""
    kind = type(value)
    if kind is str:
        return _string(b"\x0a", value)
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is int:
        return b"\x18" + varint(value & _INT64)
    if kind is float:
        return _DOUBLE.pack(0x21, value)
    if isinstance(value, str):  # subclasses (str enums, ...)
        return _string(b"\x0a", str(value))
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + varint(int(value) & _INT64)
    if isinstance(value, float):
        return _DOUBLE.pack(0x21, float(value))
    if isinstance(value, bytes | bytearray):
        return _field(b"\x3a", bytes(value))
    if isinstance(value, Mapping):
        return _field(b"\x32", b"".join(_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items()))
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(v)) for v in value))
    return _string(b"\x0a", str(value))  # anything else as its text (the SDK would drop it)


def _key_value(key: str, value: Any) -> bytes:
    """A ``KeyValue`` message body."""
    return _string(b"\x0a", key) + _field(b"\x12", _any_value(value))


class _Attributes:
    """Encodes attribute lists under one field tag.

    Whole fields are cached for (key, str), (key, bool) and (key, small int) values (span names,
    methods, model names and versions, status codes, row counts repeat), and per key the field's
    head for floats (a fixed-size value: head + 8 bytes), in bounded caches.
    """

    __slots__ = ("_float_heads", "_ints", "_strings", "_tag")

    def __init__(self, tag: bytes) -> None:
        self._tag = tag
        self._strings: dict[tuple[str, str | bool], bytes] = {}  # str and bool values (1 == True: ints apart)
        self._ints: dict[tuple[str, int], bytes] = {}
        self._float_heads: dict[str, bytes] = {}

    def encode(self, attributes: Mapping[str, Any], parts: list[bytes]) -> None:
        for key, value in attributes.items():
            kind = type(value)
            if kind is str or kind is bool:
                field = self._strings.get((key, value))
                if field is None:
                    field = self._remember(self._strings, (key, value), key, value)
            elif kind is float:
                head = self._float_heads.get(key)
                if head is None:
                    head = self._float_head(key)
                field = head + _F64.pack(value)
            elif kind is int and 0 <= value < 1024:
                field = self._ints.get((key, value))
                if field is None:
                    field = self._remember(self._ints, (key, value), key, value)
            elif value is not None:
                field = _field(self._tag, _key_value(key, value))
            else:
                continue
            parts.append(field)

    def _remember(self, cache: dict, k: Any, key: str, value: Any) -> bytes:
        field = _field(self._tag, _key_value(key, value))
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[k] = field
        return field

    def _float_head(self, key: str) -> bytes:
        # KeyValue {1: key, 2: AnyValue {4: double}}: all but the 8 value bytes
        body = _string(b"\x0a", key) + b"\x12\x09\x21"
        head = self._tag + varint(len(body) + 8) + body
        if len(self._float_heads) < _CACHE_LIMIT:
            self._float_heads[key] = head
        return head


_SPAN_ATTRIBUTES = _Attributes(b"\x4a")  # Span.attributes (9)
_EVENT_ATTRIBUTES = _Attributes(b"\x1a")  # Span.Event.attributes (3)
_LINK_ATTRIBUTES = _Attributes(b"\x22")  # Span.Link.attributes (4)
_HEADS: dict[str, tuple[SpanKind, bytes]] = {}  # name -> (kind, Span.name (5) and Span.kind (6) fields)


def _trace_state(state: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in state.items()) if state else ""


def encode_span(span: LeanSpan) -> bytes:
    """One ``Span`` message body."""
    ctx = span.get_span_context()
    parts = [b"\x0a\x10", ctx.trace_id.to_bytes(16, "big"), b"\x12\x08", ctx.span_id.to_bytes(8, "big")]
    state = ctx.trace_state
    if state is not _NO_STATE and state:
        parts.append(_string(b"\x1a", _trace_state(state)))
    parent = span.parent
    if parent is not None:
        parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
    head = _HEADS.get(span.name)
    if head is None or head[0] is not span.kind:  # (an enum's hash is a Python call: the name is the key)
        head = (span.kind, _string(b"\x2a", span.name) + _KIND.get(span.kind, b"\x30\x01"))
        if len(_HEADS) < _CACHE_LIMIT:
            _HEADS[span.name] = head
    parts.append(head[1])
    parts.append(_TIMES.pack(0x39, span.start_ns, 0x41, span.end_ns))
    if span.attributes:
        _SPAN_ATTRIBUTES.encode(span.attributes, parts)
    for event_name, time_ns, attributes in span.events:
        body = [_FIXED64.pack(0x09, time_ns), _string(b"\x12", event_name)]
        _EVENT_ATTRIBUTES.encode(attributes, body)
        parts.append(_field(b"\x5a", b"".join(body)))
    for link in span.links:
        lc = link.context
        state = lc.trace_state
        if (state is not _NO_STATE and state) or link.attributes:
            body = [b"\x0a\x10", lc.trace_id.to_bytes(16, "big"), b"\x12\x08", lc.span_id.to_bytes(8, "big")]
            if state:
                body.append(_string(b"\x1a", _trace_state(state)))
            if link.attributes:
                _LINK_ATTRIBUTES.encode(link.attributes, body)
            body.append(_LINK_FLAGS[lc.is_remote])
            parts.append(_field(b"\x6a", b"".join(body)))
        else:  # the batch span's links: ids and flags only, a fixed size
            parts += (_BARE_LINK, lc.trace_id.to_bytes(16, "big"), b"\x12\x08", lc.span_id.to_bytes(8, "big"))
            parts.append(_LINK_FLAGS[lc.is_remote])
    code = _STATUS_CODE.get(span.status_code)
    if code is not None:
        status = (_string(b"\x12", span.status_message) if span.status_message else b"") + code
        parts.append(_field(b"\x7a", status))
    parts.append(_FLAGS_REMOTE_PARENT if parent is not None and parent.is_remote else _FLAGS_LOCAL_PARENT)
    return b"".join(parts)


def encode_resource(attributes: Mapping[str, Any]) -> bytes:
    """The ``ResourceSpans.resource`` field (1): encode once per exporter."""
    return _field(b"\x0a", b"".join(_field(b"\x0a", _key_value(k, v)) for k, v in attributes.items()))


def encode_scope(scope: Scope) -> bytes:
    """The ``ScopeSpans.scope`` field (1)."""
    body = _string(b"\x0a", scope.name) + (_string(b"\x12", scope.version) if scope.version else b"")
    return _field(b"\x0a", body)


def _native_encoder() -> Any:
    """``_otlp_native.span_field`` (C: the common request span's field), or None where it is not built
    or ``SIDECAR_OTLP_ENCODER=python`` (read once, at import) asks for Python alone."""
    native = load_native(ENCODER_ENV)
    return None if native is None else native.span_field


ENCODER_ENV = "SIDECAR_OTLP_ENCODER"
native_span_field = _native_encoder()
ENCODER = "native" if native_span_field is not None else "python"  # which encoder TraceEncoder uses


def span_field(span: LeanSpan) -> bytes:
    """The ``ScopeSpans.spans`` field (2) of one span: the C encoder's where it takes the span's shape,
    else ``encode_span``'s (the same bytes)."""
    if native_span_field is not None:
        field = native_span_field(span)
        if field is not None:
            return field
    body = encode_span(span)
    return b"\x12" + varint(len(body)) + body


class TraceEncoder:
    """``ExportTraceServiceRequest`` bytes for a batch of spans of one resource.

    Encoding runs on the export thread. Request spans take the C encoder (``_otlp_native``, ~0.7 us a
    span) where it is built; the rest, and every span without it, Python's (~2.7 us). About every
    ``YIELD_EVERY`` Python-encoded spans' worth of work it lets go of the GIL for a moment
    (``time.sleep(0)``), so an event loop waiting for it waits ~0.2 ms, not the whole batch (~1.5 ms
    for 512 spans in Python: CPython hands the GIL over only after a 5 ms switch interval otherwise).
    """

    YIELD_EVERY = 64
    NATIVE_WEIGHT = 16  # a span the C encoder took counts this share (1/16) of a Python-encoded one

    def __init__(self, resource: Mapping[str, Any]) -> None:
        self._resource = encode_resource(resource)
        self._scopes: dict[Scope, bytes] = {}
        # The scope of the encoded spans the span queue keeps as bare bytes (no tuple: an object the
        # garbage collector tracks, alive until its export): set by the queue's C sink
        # (``_otlp_native.SpanSink``, created with this encoder) before the first of them.
        self.bytes_scope: Scope | None = None

    def at_end(self, span: LeanSpan) -> tuple[Scope, bytes] | None:
        """The span's (scope, field) from the C encoder, for the span queue to keep instead of the span
        (``export.BoundedSpanProcessor``); None where only Python takes the span (then the span is kept,
        and encoded here on the export thread). Measured: keeping each ended span's objects until its
        export costs the event loop about what encoding it as it ends does (in process, even within
        ~1 us a request), and served it was in the noise and never worse (README, Telemetry); the
        export thread then only joins bytes."""
        native = native_span_field
        if native is None:
            return None
        try:
            encoded = native(span)
        except Exception:  # never on the request path: Python encodes it on the export thread instead
            return None
        return None if encoded is None else (span.scope, encoded)

    def encode(self, spans: Iterable[LeanSpan | tuple[Scope, bytes] | bytes]) -> bytes:
        """``spans``: ended spans, or what ``at_end`` made of them, or the field alone (``bytes_scope``'s
        spans), in any mix."""
        by_scope: dict[Scope, list[bytes]] = {}
        native = native_span_field
        budget = self.YIELD_EVERY * self.NATIVE_WEIGHT
        spent = 0
        for span in spans:
            if span.__class__ is bytes:  # encoded when it ended, by the queue's C sink
                scope, encoded = self.bytes_scope, span
            elif span.__class__ is tuple:  # encoded when it ended
                scope, encoded = span  # type: ignore[misc]
            else:
                scope = span.scope
                encoded = native(span) if native is not None else None
                if encoded is None:
                    body = encode_span(span)
                    encoded = b"\x12" + varint(len(body)) + body  # ScopeSpans.spans (2)
                    spent += self.NATIVE_WEIGHT
                else:
                    spent += 1
                if spent >= budget:
                    spent = 0
                    time.sleep(0)  # releases the GIL: a waiting thread takes it
            group = by_scope.get(scope)
            if group is None:
                by_scope[scope] = [encoded]
            else:
                group.append(encoded)
        scope_spans = []
        for scope, encoded_spans in by_scope.items():
            head = self._scopes.get(scope)
            if head is None:
                head = self._scopes[scope] = encode_scope(scope)
            scope_spans.append(_field(b"\x12", head + b"".join(encoded_spans)))  # ResourceSpans.scope_spans (2)
        return _field(b"\x0a", self._resource + b"".join(scope_spans))  # ExportTraceServiceRequest (1)


# -- transports: send(bytes) -> True when delivered; False or an exception when not ------------------


class _Retrying:
    """Retries transient failures as the SDK's OTLP exporters do: after ~1 s, 2 s, 4 s ... (jittered),
    only while the next wait still ends before the export's deadline, and never after shutdown."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._stop = threading.Event()

    def _deliver(self, attempt: Any) -> bool:
        deadline = time.monotonic() + self._timeout_s
        backoff = 1.0
        while True:
            outcome = attempt(max(deadline - time.monotonic(), 0.001))
            if outcome is not None:
                return outcome
            wait = backoff * random.uniform(0.8, 1.2)
            if wait > deadline - time.monotonic() or self._stop.wait(wait):
                return False
            backoff *= 2

    def shutdown(self, timeout_millis: float = 0) -> None:
        self._stop.set()


class GrpcTransport(_Retrying):
    """OTLP/gRPC: one collector service's Export call with encoded bytes (no protobuf objects)."""

    RETRY = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")

    def __init__(self, target: OtlpTarget, method: str) -> None:
        import grpc

        super().__init__(target.timeout_s)
        self._grpc = grpc
        parsed = urllib.parse.urlsplit(target.endpoint if "://" in target.endpoint else f"//{target.endpoint}")
        address = parsed.netloc or target.endpoint
        compression = grpc.Compression.Gzip if target.compression == "gzip" else grpc.Compression.NoCompression
        if target.insecure:
            self._channel = grpc.insecure_channel(address, compression=compression)
        else:
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(), compression=compression)
        self._call = self._channel.unary_unary(method)  # bytes in, bytes out
        self._metadata = tuple((k.lower(), v) for k, v in target.headers) or None

    def send(self, body: bytes) -> bool:
        last: list[Any] = [None]

        def attempt(timeout_s: float) -> bool | None:
            try:
                self._call(body, timeout=timeout_s, metadata=self._metadata)
                return True
            except self._grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                last[0] = exc
                if code is not None and code.name in self.RETRY:
                    return None
                raise

        if self._deliver(attempt):
            return True
        exc = last[0]
        if exc is not None:
            code = exc.code() if hasattr(exc, "code") else None
            raise ConnectionError(
                f"{code.name if code else 'failed'}: {exc.details() if hasattr(exc, 'details') else exc}"
            )
        return False

    def shutdown(self, timeout_millis: float = 0) -> None:
        super().shutdown()
        self._channel.close()


class HttpTransport(_Retrying):
    """OTLP/HTTP with protobuf: POST encoded bytes to the signal's URL (``.../v1/traces``, ``.../v1/metrics``)."""

    RETRY = (429, 502, 503, 504)

    def __init__(self, target: OtlpTarget) -> None:
        import requests

        super().__init__(target.timeout_s)
        self._requests = requests
        self._endpoint = target.endpoint
        self._gzip = target.compression == "gzip"
        self._session = requests.Session()
        self._session.headers.update(dict(target.headers))
        self._session.headers["Content-Type"] = "application/x-protobuf"
        if self._gzip:
            self._session.headers["Content-Encoding"] = "gzip"

    def send(self, body: bytes) -> bool:
        if self._gzip:
            body = gzip.compress(body)
        last: list[str] = [""]

        def attempt(timeout_s: float) -> bool | None:
            try:
                response = self._session.post(self._endpoint, data=body, timeout=timeout_s)
            except self._requests.ConnectionError as exc:
                last[0] = f"{type(exc).__name__}: {exc}"
                return None
            if 200 <= response.status_code < 300:
                return True
            last[0] = f"HTTP {response.status_code}"
            return None if response.status_code in self.RETRY else False

        if self._deliver(attempt):
            return True
        raise ConnectionError(last[0] or "the collector refused the data")

    def shutdown(self, timeout_millis: float = 0) -> None:
        super().shutdown()
        self._session.close()


class GrpcSpanExporter:
    """OTLP/gRPC trace export: the TraceService Export call."""

    def __init__(self, target: OtlpTarget, resource: Mapping[str, Any]) -> None:
        self._encoder = TraceEncoder(resource)
        self.at_end = self._encoder.at_end  # the span queue keeps encoded spans (BoundedSpanProcessor)
        self._transport = GrpcTransport(target, GRPC_METHOD)

    def export(self, spans: Sequence[LeanSpan | tuple[Scope, bytes]]) -> bool:
        return self._transport.send(self._encoder.encode(spans))

    def shutdown(self, timeout_millis: float = 0) -> None:
        self._transport.shutdown()


class HttpSpanExporter:
    """OTLP/HTTP trace export: POST to ``.../v1/traces``."""

    def __init__(self, target: OtlpTarget, resource: Mapping[str, Any]) -> None:
        self._encoder = TraceEncoder(resource)
        self.at_end = self._encoder.at_end
        self._transport = HttpTransport(target)

    def export(self, spans: Sequence[LeanSpan | tuple[Scope, bytes]]) -> bool:
        return self._transport.send(self._encoder.encode(spans))

    def shutdown(self, timeout_millis: float = 0) -> None:
        self._transport.shutdown()


class ConsoleSpanExporter:
    """One JSON object per span on stdout (as the SDK's console exporter), for debugging."""

    def __init__(self, resource: Mapping[str, Any], out: Any = None) -> None:
        self._resource = dict(resource)
        self._out = out

    def export(self, spans: Sequence[LeanSpan]) -> bool:
        out = self._out or sys.stdout
        for span in spans:
            out.write(json.dumps(span_dict(span, self._resource), indent=4, default=str) + "\n")
        out.flush()
        return True

    def shutdown(self, timeout_millis: float = 0) -> None:
        pass


def span_dict(span: LeanSpan, resource: Mapping[str, Any]) -> dict[str, Any]:
    ctx = span.get_span_context()
    return {
        "name": span.name,
        "context": {
            "trace_id": f"0x{ctx.trace_id:032x}",
            "span_id": f"0x{ctx.span_id:016x}",
            "trace_state": _trace_state(ctx.trace_state),
        },
        "kind": str(span.kind),
        "parent_id": f"0x{span.parent.span_id:016x}" if span.parent is not None else None,
        "start_time": _iso(span.start_ns),
        "end_time": _iso(span.end_ns),
        "status": {"status_code": span.status_code.name, "description": span.status_message or None},
        "attributes": dict(span.attributes),
        "events": [{"name": n, "timestamp": _iso(t), "attributes": dict(a)} for n, t, a in span.events],
        "links": [
            {
                "context": {"trace_id": f"0x{x.context.trace_id:032x}", "span_id": f"0x{x.context.span_id:016x}"},
                "attributes": dict(x.attributes or {}),
            }
            for x in span.links
        ],
        "resource": {"attributes": dict(resource), "schema_url": ""},
        "scope": {"name": span.scope.name, "version": span.scope.version},
    }


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat().replace("+00:00", "Z")
