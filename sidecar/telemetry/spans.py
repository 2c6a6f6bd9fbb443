"""Spans on the request path, written against the OpenTelemetry API only.

Without a configured SDK the API hands out non-recording spans, so these calls cost little and do
nothing; the telemetry stage installs the SDK's tracer provider when tracing is on.

Batched work follows the specification: one span per engine run (batch) with a link to the span of
each request it served; each request span records its queue time and the batch span it went into.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace

_tracer = trace.get_tracer("sidecar.batching")
INVALID_SPAN = _INVALID = trace.INVALID_SPAN


def current_span() -> Any:
    """The span active on this request's context (a non-recording one when tracing is off)."""
    return trace.get_current_span()


@contextmanager
def batch_span(model: str, version: str, request_spans: Sequence[Any], rows: int, provider: str) -> Iterator[Any]:
    """Wrap one engine run. ``request_spans`` are the spans of the requests in the batch."""
    links = []
    for span in request_spans:
        ctx = span.get_span_context()
        if ctx.is_valid and ctx.trace_flags.sampled:  # a link to an unrecorded span would dangle
            links.append(trace.Link(ctx))
    if not links:
        # Nothing sampled in this batch: no span to record (and no tracer work on the hot path).
        yield _INVALID
        return
    attributes = {
        "model.name": model,
        "model.version": version,
        "sidecar.batch.rows": rows,
        "sidecar.batch.requests": len(request_spans),
        "sidecar.engine.provider": provider,
    }
    with _tracer.start_as_current_span(
        "sidecar.batch",
        context=trace.set_span_in_context(_INVALID),
        links=links,
        attributes=attributes,
        kind=trace.SpanKind.INTERNAL,
        record_exception=True,
        set_status_on_exception=True,
    ) as span:
        batch_id = format(span.get_span_context().span_id, "016x")
        for req in request_spans:
            if req.is_recording():
                req.set_attribute("sidecar.batch.span_id", batch_id)
                req.set_attribute("sidecar.batch.rows", rows)
        yield span


def record_queue_time(span: Any, queue_s: float) -> None:
    if span.is_recording():
        span.set_attribute("sidecar.queue.duration_s", queue_s)
