"""Per-RPC telemetry around a servicer: a server span per call and ``rpc.server.call.duration``.

Not a ``grpc.aio.ServerInterceptor``: the generic interceptor machinery runs a coroutine per call for
every method before the handler is even chosen. Instead ``observed(servicer, ...)`` wraps each
servicer method once, at registration (the generated ``add_*_to_server`` reads the methods from the
object it is given), so the per-call cost is the wrapper alone, and nothing at all when telemetry is
off (the servicer itself is registered).

The span continues the caller's W3C ``traceparent``/``tracestate`` from the call metadata and is the
current span while the method runs (batchers link their batch spans to it). Its status follows the
OpenTelemetry gRPC conventions: ``rpc.status_code`` always; ERROR status (with the gRPC details as
description, and ``error.type``) for the codes that are server faults: UNKNOWN, DEADLINE_EXCEEDED,
UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS. Client faults (INVALID_ARGUMENT, NOT_FOUND, ...)
carry ``rpc.status_code`` and ``error.type`` but leave the status unset.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode

from sidecar.protobuf_wire import read_varint
from sidecar.protocol.registration import CALL_METADATA
from sidecar.telemetry import lean_tracing
from sidecar.telemetry.histograms import HistogramFamily
from sidecar.telemetry.lean_tracing import enter_current, leave_current
from sidecar.telemetry.propagation import remote_span_context

SERVER_ERRORS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"})
_CODE_NAMES = {c: c.name for c in grpc.StatusCode}
_CODE_NAMES.update({c.value[0]: c.name for c in grpc.StatusCode})
_SERVER = SpanKind.SERVER
_tapped = CALL_METADATA.get
_native = lean_tracing.native_core()


def observed(servicer: Any, service: str, tracer: Any, durations: HistogramFamily | None) -> Any:
    """``servicer`` with every RPC method observed; ``servicer`` itself when there is nothing to record."""
    if tracer is None and durations is None:
        return servicer
    return ObservedServicer(servicer, service, tracer, durations)


class ObservedServicer:
    """Presents the wrapped servicer's RPC methods (capitalised names) with telemetry around them."""

    def __init__(self, servicer: Any, service: str, tracer: Any, durations: HistogramFamily | None) -> None:
        self._servicer = servicer
        self._service = service
        self._tracer = tracer
        self._durations = durations

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._servicer, name)
        if not name[:1].isupper() or not callable(attr):
            return attr
        call = _Call(f"{self._service}/{name}", self._tracer, self._durations)
        if inspect.isasyncgenfunction(attr):
            return call.wrap_stream(attr)
        return call.wrap_unary(attr)


class _Call:
    """What one RPC method's wrapper needs, computed once."""

    __slots__ = (
        "_by_code",
        "_durations",
        "_finish_ok",
        "_lean",
        "_start_call",
        "_start_span",
        "_tracer",
        "attributes",
        "method",
    )

    def __init__(self, method: str, tracer: Any, durations: HistogramFamily | None) -> None:
        self.method = method
        self._tracer = tracer
        # The lean tracer's (no span object for an unsampled call); any other API tracer works too.
        lean = getattr(tracer, "start_request_span", None)
        self._lean = lean is not None  # its spans' attributes are written straight into their dict
        self._start_span = lean or functools.partial(_api_span, tracer)
        self._durations = durations
        self._by_code: dict[str, Any] = {}  # status code name -> histogram series; replaced, never mutated
        self.attributes = {"rpc.system.name": "grpc", "rpc.method": method}
        # A unary call's start, (context, request) -> (span, token, context): ``_start``, or where the
        # lean tracer's span core is C the same in one C call for the common call (metadata tapped, no
        # caller trace context, a serialized request), ``_start`` for every other; and a lean span's end
        # for an OK call, (span, token), in one C call (``_otlp_native.CallStart``, ``finish_ok``).
        self._start_call: Callable[[Any, Any], tuple[Any, Any, Any]] = self._start
        self._finish_ok: Callable[[Any, Any], None] | None = None
        starter = getattr(lean, "__self__", None)
        if _native is not None and type(starter) is _native.RequestStarter and enter_current is _native.enter_current:
            self._start_call = _native.CallStart(starter, method, _SERVER, self.attributes, CALL_METADATA, self._start)
            self._finish_ok = _native.finish_ok

    def _series(self, code: str) -> Any:
        series = self._by_code.get(code)
        if series is None:
            series = self._durations.series(**self.attributes, **{"rpc.status_code": code})  # type: ignore[union-attr]
            self._by_code = {**self._by_code, code: series}
        return series

    def _start(self, context: Any, request: Any) -> tuple[Any, Any, Any]:
        """(span, context token, context for the servicer); (None, None or a token, ...) for an unsampled call.

        A recording span is the current span of the OpenTelemetry context (``spans.current_span()``
        reads it, in one call per request). An unsampled call from a caller with a trace context has no
        span; the caller's context, as a non-recording span, is current instead, so that an upstream
        call carries the decision on.
        """
        metadata = _tapped()  # what the handler lookup kept for this call (registration.MetadataTap)
        tapped = metadata is not None
        if not tapped:
            metadata = context.invocation_metadata() or ()
        traceparent = tracestate = None
        for key, value in metadata:
            if key == "traceparent":
                traceparent = value
            elif key == "tracestate":
                tracestate = value
        parent = None
        if traceparent is not None:
            parent = remote_span_context(_text(traceparent), _text(tracestate) if tracestate is not None else None)
        span = self._start_span(self.method, parent, _SERVER, self.attributes)
        if not tapped:  # the servicer's own reads get this tuple (tapped, they read the tap's)
            context = _MetadataRead(context, metadata)
        if span is None:
            if parent is not None:  # the caller's decision, "not sampled", goes on to an upstream call
                return None, enter_current(NonRecordingSpan(parent)), context
            return None, None, context
        if request.__class__ is bytes or request.__class__ is memoryview:  # ModelInfer's, serialized
            # A lean span gets the model and the version that served it from the repository
            # (sidecar.engine.repository), and from the request's bytes in ``_finish`` for a call that
            # failed before (served, reading them here cost ~4 us a traced request).
            name, version = ("", "") if self._lean else model_of(request)
        else:
            name = getattr(request, "model_name", None)
            version = request.model_version if name else ""
        if name:
            if self._lean:  # straight into the span's dict
                span.attributes["model.name"] = name
                if version:
                    span.attributes["model.version"] = version
            else:
                span.set_attribute("model.name", name)
                if version:
                    span.set_attribute("model.version", version)
        return span, enter_current(span), context

    def _finish(
        self, span: Any, token: Any, start_ns: int, code: str, exc: BaseException | None, ctx: Any, request: Any
    ) -> None:
        if span is not None and code == "OK" and self._finish_ok is not None:
            self._finish_ok(span, token)
            span = token = None
        if token is not None:
            leave_current(token)
        if span is not None:
            if code == "OK" and self._lean:
                span.attributes["rpc.status_code"] = "OK"
            else:
                if self._lean and "model.name" not in span.attributes and request.__class__ in (bytes, memoryview):
                    name, version = model_of(request)  # a ModelInfer that failed before the repository named it
                    if name:
                        span.attributes["model.name"] = name
                        if version:
                            span.attributes["model.version"] = version
                span.set_attribute("rpc.status_code", code)
                if code != "OK":
                    error_type = type(exc).__name__ if exc is not None and code == "UNKNOWN" else code
                    span.set_attribute("error.type", error_type)
                    if code in SERVER_ERRORS:
                        span.set_status(Status(StatusCode.ERROR, _details(ctx) or error_type))
            span.end()
        if self._durations is not None:
            self._series(code).record(time.monotonic_ns() - start_ns)

    def wrap_unary(self, method: Callable[..., Any]) -> Callable[..., Any]:
        tracer = self._tracer

        async def unary(request: Any, context: Any) -> Any:
            start = time.monotonic_ns()
            span = token = None
            if tracer is not None:
                span, token, context = self._start_call(context, request)
            code, error = "OK", None
            try:
                response = await method(request, context)
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except grpc.aio.AbortError:
                code = _code(context) or "UNKNOWN"
                raise
            except BaseException as exc:
                code, error = "UNKNOWN", exc
                raise
            else:
                code = _code(context) or "OK"
                return response
            finally:
                self._finish(span, token, start, code, error, context, request)

        unary.__name__ = method.__name__
        return unary

    def wrap_stream(self, method: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        tracer = self._tracer

        async def stream(request_iterator: Any, context: Any) -> AsyncIterator[Any]:
            start = time.monotonic_ns()
            span = token = None
            if tracer is not None:
                span, token, context = self._start(context, None)
            code, error = "OK", None
            try:
                async for response in method(request_iterator, context):
                    yield response
            except (asyncio.CancelledError, GeneratorExit):
                code = "CANCELLED"
                raise
            except grpc.aio.AbortError:
                code = _code(context) or "UNKNOWN"
                raise
            except BaseException as exc:
                code, error = "UNKNOWN", exc
                raise
            else:
                code = _code(context) or "OK"
            finally:
                self._finish(span, token, start, code, error, context, None)

        stream.__name__ = method.__name__
        return stream


def _api_span(tracer: Any, name: str, parent: Any, kind: SpanKind, attributes: Any) -> Any:
    """``LeanTracer.start_request_span`` for any OpenTelemetry API tracer (the SDK's, in benchmarks)."""
    context = trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent is not None else None
    span = tracer.start_span(name, context=context, kind=kind, attributes=attributes)
    return span if span.is_recording() else None


def model_of(encoded: bytes) -> tuple[str, str]:
    """(model_name, model_version) of a serialized ``ModelInferRequest`` (fields 1 and 2, strings), for a
    sampled call's span; the servicer parses (and checks) the whole message. Protobuf serializers write
    fields in number order, so this reads only what comes before the first later field."""
    name = version = ""
    pos = 0
    try:
        while True:
            tag = encoded[pos]
            if tag != 0x0A and tag != 0x12:  # model_name (1) or model_version (2), length-delimited
                return name, version
            size, start = read_varint(encoded, pos + 1)
            pos = start + size
            if pos > len(encoded):
                return "", ""
            if tag == 0x0A:
                name = str(encoded[start:pos], "utf-8")
            else:
                version = str(encoded[start:pos], "utf-8")
    except (IndexError, UnicodeDecodeError):  # the end of the message, or not a message at all
        return name, version


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode()


class _MetadataRead:
    """A call's ``grpc.aio.ServicerContext`` whose invocation metadata was read once, by the wrapper.

    grpc.aio builds a new tuple of ``_Metadatum`` on every ``invocation_metadata()`` call (~2.5 us with
    two entries); the wrapper reads it for the trace context, and the servicer's own reads (the routing
    key, per message of a stream) get the same tuple. Everything else goes to the real context.
    Only for a call whose metadata was not tapped (``registration.MetadataTap``, on the sidecar's own
    inference port when tracing is on): there the wrapper and the servicer both read the tap's tuple.
    """

    __slots__ = ("_context", "_metadata", "time_remaining")

    def __init__(self, context: Any, metadata: Any) -> None:
        self._context = context
        self._metadata = metadata
        # read for every request (its deadline): the context's own method, no call through this one
        # (a context without one leaves the slot unset: __getattr__ then asks the context, and fails)
        try:  # noqa: SIM105
            self.time_remaining = context.time_remaining
        except AttributeError:
            pass

    def invocation_metadata(self) -> Any:
        return self._metadata

    def code(self) -> Any:
        return self._context.code()

    def details(self) -> Any:
        return self._context.details()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _code(context: Any) -> str | None:
    try:
        code = context.code()
    except Exception:
        return None
    if code is None:
        return None
    return _CODE_NAMES.get(code, str(code))


def _details(context: Any) -> str:
    try:
        details = context.details()
    except Exception:
        return ""
    if isinstance(details, bytes):
        return details.decode(errors="replace")
    return details or ""
