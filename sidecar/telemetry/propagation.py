"""W3C trace context from a caller's ``traceparent``/``tracestate``, parsed directly.

The API's ``TraceContextTextMapPropagator.extract`` (getter objects, a regex, a ``TraceState`` parse
even when there is none) costs about 3 us per traced call; this split-and-check does the same
validation (https://www.w3.org/TR/trace-context/#traceparent-header) in well under one.
"""

from __future__ import annotations

import random

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.span import TraceState

_HEX = frozenset("0123456789abcdef")
_FLAGS = [TraceFlags(i) for i in range(256)]


def remote_context(traceparent: str, tracestate: str | None = None) -> Context | None:
    """A context whose current span is the caller's (remote, non-recording), or None if invalid."""
    ctx = remote_span_context(traceparent, tracestate)
    return None if ctx is None else trace.set_span_in_context(NonRecordingSpan(ctx))


def remote_span_context(traceparent: str, tracestate: str | None = None) -> SpanContext | None:
    """The caller's span context (``is_remote``), or None if ``traceparent`` is invalid.

    As the API's propagator: version ``ff`` is invalid, version ``00`` must have exactly four fields,
    later versions may carry more; all-zero ids are invalid; surrounding whitespace is allowed.
    """
    fields = traceparent.strip().split("-")
    if len(fields) < 4:
        return None
    version, trace_hex, span_hex, flags_hex = fields[0], fields[1], fields[2], fields[3]
    if (
        len(version) != 2
        or len(trace_hex) != 32
        or len(span_hex) != 16
        or len(flags_hex) != 2
        or version == "ff"
        or (version == "00" and len(fields) != 4)
        or not _HEX.issuperset(version + trace_hex + span_hex + flags_hex)
    ):
        return None
    trace_id = int(trace_hex, 16)
    span_id = int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    state = TraceState.from_header([tracestate]) if tracestate else None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=_FLAGS[int(flags_hex, 16)], trace_state=state)


def trace_context_metadata(ctx: SpanContext) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying ``ctx`` to the next hop (``traceparent``, and ``tracestate`` when it has
    one), as the API's ``TraceContextTextMapPropagator.inject`` writes them; () for an invalid context."""
    if not ctx.is_valid:
        return ()
    carried = (("traceparent", f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"),)
    if ctx.trace_state:
        carried += (("tracestate", ctx.trace_state.to_header()),)
    return carried


def unsampled_metadata() -> tuple[tuple[str, str], ...]:
    """gRPC metadata saying "not sampled" in a trace of its own (fresh random ids, flags 00): what goes
    upstream from a request the sidecar decided not to trace and that came without a trace context.
    The OpenTelemetry SDK would propagate its unsampled root span's context the same way; the sidecar
    makes no span object for such a request (``LeanTracer.start_request_span``), so the ids are drawn
    here, only for calls that leave the sidecar. A parent-based sampler upstream then records nothing
    of it, instead of starting traces whose root is missing."""
    ids = SpanContext(random.getrandbits(128) or 1, random.getrandbits(64) or 1, False, _FLAGS[0])
    return trace_context_metadata(ids)
