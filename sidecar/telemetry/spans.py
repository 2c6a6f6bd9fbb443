"""Spans on the request path, written against the OpenTelemetry API only.

Without tracing the request path carries ``INVALID_SPAN`` and these calls cost little and do nothing;
the telemetry stage installs the lean tracer (``lean_tracing``) when tracing is on, and the sidecar's
own request spans (``LeanSpan``) get their attributes written straight into their dict.

Batched work follows the specification: one span per engine run (batch) with a link to the span of
each request it served; each request span records its queue time and the batch span it went into.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

from opentelemetry import trace

from sidecar.telemetry import lean_tracing, tracing
from sidecar.telemetry.lean_tracing import LeanSpan, LeanTracer, enter_current, leave_current

# The switch directly, not trace.get_tracer(): the API's proxy tracer would add a generator-based
# context manager around every batch span.
_tracer = tracing.SWITCH.get_tracer("sidecar.batching")
INVALID_SPAN = _INVALID = trace.INVALID_SPAN
_NO_SPAN = nullcontext(_INVALID)  # reusable
_INTERNAL = trace.SpanKind.INTERNAL
_NO_PARENT = trace.set_span_in_context(_INVALID)


# The OpenTelemetry context's current span: the request's server span (set by the RPC wrapper,
# sidecar.protocol.interceptors, for a recording span; for an unsampled call from a caller with a trace
# context, the caller's as a non-recording span), a shadow call's or a batch's span, or the invalid span.
current_span = lean_tracing.current_span  # () -> that span, in one call (the API's lookup takes five)


def batch_span(model: str, version: str, request_spans: Sequence[Any], rows: int, provider: str) -> Any:
    """A context manager around one engine run. ``request_spans`` are the spans of the requests in the batch.

    The batch span is current inside, starts a trace of its own and links to each sampled request span;
    each recording request span gets the batch's span id and row count. With no sampled request in the
    batch there is no span (the context manager yields the invalid span).
    """
    if not request_spans:
        return _NO_SPAN
    attributes = {
        "model.name": model,
        "model.version": version,
        "sidecar.batch.rows": rows,
        "sidecar.batch.requests": len(request_spans),
        "sidecar.engine.provider": provider,
    }
    tracer = _tracer.resolve()
    if type(tracer) is LeanTracer:
        for span in request_spans:
            if type(span) is not LeanSpan:
                break
        else:  # the sidecar's own request spans (recording, so sampled and valid): no checks, no API detour
            span = tracer.start_linked_span("sidecar.batch", request_spans, attributes)
            if span is None:
                return _NO_SPAN
            return _LeanBatchSpan(span, request_spans, rows)
    links = []
    for span in request_spans:
        ctx = span.get_span_context()
        if ctx.trace_flags.sampled and ctx.is_valid:  # a link to an unrecorded span would dangle
            links.append(trace.Link(ctx))
    if not links:
        return _NO_SPAN
    return _BatchSpan(
        tracer.start_as_current_span(
            "sidecar.batch",
            context=_NO_PARENT,
            links=links,
            attributes=attributes,
            kind=_INTERNAL,
            record_exception=True,
            set_status_on_exception=True,
        ),
        request_spans,
        rows,
    )


class _LeanBatchSpan:
    """``_BatchSpan(UseSpan(span, ...))`` for a lean batch span and the sidecar's own request spans,
    in one object (two Python calls fewer per batch): each request span gets the batch's span id and
    rows, the batch span is current inside (the API's context) and ends on exit,
    with an exception leaving it recorded and its status ERROR."""

    __slots__ = ("_requests", "_rows", "_span", "_token")

    def __init__(self, span: LeanSpan, request_spans: Sequence[LeanSpan], rows: int) -> None:
        self._span = span
        self._requests = request_spans
        self._rows = rows
        self._token: Any = None

    def __enter__(self) -> LeanSpan:
        span = self._span
        _name_the_batch(self._requests, span._context.span_id, self._rows)
        self._token = enter_current(span)
        return span

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        leave_current(self._token)
        span = self._span
        if isinstance(exc, Exception):
            span._on_error(exc, True, True)
        span.end()


class _BatchSpan:
    __slots__ = ("_inner", "_requests", "_rows")

    def __init__(self, inner: Any, request_spans: Sequence[Any], rows: int) -> None:
        self._inner = inner
        self._requests = request_spans
        self._rows = rows

    def __enter__(self) -> Any:
        span = self._inner.__enter__()
        _name_the_batch(self._requests, span.get_span_context().span_id, self._rows)
        return span

    def __exit__(self, *exc: Any) -> Any:
        return self._inner.__exit__(*exc)


def _name_the_batch(request_spans: Sequence[Any], batch_span_id: int, rows: int) -> None:
    """Each recording request span gets the batch's span id and its rows."""
    batch_id = format(batch_span_id, "016x")
    for req in request_spans:
        if type(req) is LeanSpan:  # the sidecar's request spans: their dict directly
            if not req.end_ns:
                attributes = req.attributes
                attributes["sidecar.batch.span_id"] = batch_id
                attributes["sidecar.batch.rows"] = rows
        elif req.is_recording():
            req.set_attribute("sidecar.batch.span_id", batch_id)
            req.set_attribute("sidecar.batch.rows", rows)


def record_queue_time(span: Any, queue_s: float) -> None:
    if type(span) is LeanSpan:
        if not span.end_ns:
            span.attributes["sidecar.queue.duration_s"] = queue_s
    elif span.is_recording():
        span.set_attribute("sidecar.queue.duration_s", queue_s)
