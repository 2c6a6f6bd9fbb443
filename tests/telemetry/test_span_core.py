"""The lean span's C core (``_otlp_native.SpanCore``, ``RequestStarter``) behaves as its Python twin, and
the tracer's tests pass with either."""

from __future__ import annotations

import gc
import os
import random
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState
from test_lean_tracing import _provider  # the tracer's tests' provider and its span list (Keep)

from sidecar.protobuf_wire import varint
from sidecar.telemetry import _otlp_native as _native  # built by `pip install -e .` (scripts/test)
from sidecar.telemetry import lean_tracing
from sidecar.telemetry.lean_tracing import LeanSpan, LeanTracerProvider, Scope, _PySpanCore
from sidecar.telemetry.otlp import encode_span, native_span_field
from sidecar.telemetry.sampling import decision

TESTS = Path(__file__).resolve().parent


def test_the_native_core_is_the_lean_spans_base_here():
    """Built (scripts/test builds it): the tracer uses it, and its one-call request start."""
    assert lean_tracing.SPAN_CORE == "native"
    assert LeanSpan.__mro__[1] is _native.SpanCore and isinstance(LeanSpan.__mro__[1], type)
    provider, _ = _provider()
    tracer = provider.get_tracer("t")
    assert type(tracer.start_request_span).__name__ == "builtin_function_or_method"
    assert isinstance(tracer.start_request_span("m", None, SpanKind.SERVER, {}), trace.Span)


def test_end_sets_the_time_once_and_hands_the_span_to_the_sink_once():
    provider, keep = _provider()
    span = provider.get_tracer("t").start_request_span("m", None, SpanKind.SERVER, {"a": 1})
    assert span.is_recording() and span.end_ns == 0
    before = time.time_ns()
    span.end()
    after = time.time_ns()
    assert keep.spans == [span] and not span.is_recording()
    assert before <= span.end_ns <= after and span.start_ns <= span.end_ns
    span.end()
    span.end(end_time=1)
    assert keep.spans == [span] and span.end_ns <= after
    other = provider.get_tracer("t").start_request_span("m", None, SpanKind.SERVER, {})
    other.end(end_time=1_700_000_000_000_000_123)
    assert other.end_ns == 1_700_000_000_000_000_123 and keep.spans[-1] is other
    with pytest.raises(TypeError, match="end_time"):
        other.end(1, 2)
    with pytest.raises(TypeError, match="end_time"):
        other.end(when=1)


def test_the_one_call_start_is_the_python_start():
    """``RequestStarter.start`` against ``LeanTracer._start_request_span``: the parent's trace id and
    state carried, fresh ids for a root, the sampler asked, the attributes copied, the provider's sink."""
    provider, keep = _provider("parentbased_traceidratio", 0.5)
    tracer = provider.get_tracer("sidecar.protocol", "1.0")
    state = TraceState([("vendor", "x")])
    parent = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0xF067AA0BA902B7, True, TraceFlags(1), state)
    attributes = {"rpc.method": "s/M"}
    for start in (tracer.start_request_span, tracer._start_request_span):
        span = start("s/M", parent, SpanKind.SERVER, attributes)
        ctx = span.get_span_context()
        assert type(ctx) is SpanContext and ctx.trace_id == parent.trace_id and ctx.trace_state == state
        assert ctx == SpanContext(ctx.trace_id, ctx.span_id, False, TraceFlags(1), state) and ctx.is_valid
        assert span.parent is parent and span.kind is SpanKind.SERVER and span.scope is tracer.scope
        assert span.attributes == attributes and span.attributes is not attributes
        assert span.links == () and span.events == () and span.status_code is StatusCode.UNSET
        assert span.status_message == "" and span.name == "s/M"
        assert start("s/M", SpanContext(1, 2, True, TraceFlags(0)), SpanKind.SERVER, {}) is None  # parent: not sampled
        span.end()
        assert keep.spans[-1] is span
    # roots: the ratio decides on the fresh trace id, as the Python start does, with the same draws
    for seed in range(4):
        got = []
        for start in (tracer.start_request_span, tracer._start_request_span):
            random.seed(seed)
            made = [start("s/M", None, SpanKind.SERVER, {}) for _ in range(64)]
            got.append([None if s is None else s.get_span_context()[:2] for s in made])
        assert got[0] == got[1] and 8 < sum(x is not None for x in got[0]) < 56
    assert all(s.parent is None for s in keep.spans[2:])


def test_members_read_and_write_as_slots_and_the_gc_collects_cycles():
    provider, keep = _provider()
    span = provider.get_tracer("t").start_request_span("m", None, SpanKind.SERVER, {})
    span.name = "renamed"
    span.status_code = StatusCode.ERROR
    span.events = [("e", 1, {})]
    span.attributes["self"] = span  # a cycle through the span's own dict
    assert (span.name, span.status_code, span.events[0][0]) == ("renamed", StatusCode.ERROR, "e")
    with pytest.raises(TypeError):
        span.start_ns = "soon"
    gone = weakref.ref(span)
    del span
    gc.collect()
    assert gone() is None
    assert keep.spans == []


def test_the_encoder_reads_the_core_and_a_twin_alike():
    """The C encoder takes a SpanCore's fields directly and any other span through its attributes: the
    same bytes as Python's encoder for both; a deleted field, and the span goes to Python's."""
    provider, _ = _provider()
    span = provider.get_tracer("t").start_request_span("m", None, SpanKind.SERVER, {"model.name": "mlp", "n": 3})
    span.end()
    twin = _PySpanCore(
        span.name, span._context, None, SpanKind.SERVER, dict(span.attributes), (), Scope("t", ""), print, span.start_ns
    )
    twin.end_ns = span.end_ns
    expected = b"\x12" + varint(len(encode_span(span))) + encode_span(span)
    assert native_span_field(span) == expected == native_span_field(twin)
    broken = provider.get_tracer("t").start_request_span("m", None, SpanKind.SERVER, {})
    broken.end()
    del broken.links
    assert native_span_field(broken) is None


def test_core_arguments_are_checked():
    with pytest.raises(TypeError):
        LeanSpan("m", None)
    with pytest.raises(TypeError, match="subtype of SpanCore"):
        _native.RequestStarter(object, SpanContext, None, None, random.getrandbits, None, None, None)
    with pytest.raises(TypeError, match="tuple subclass"):
        _native.RequestStarter(LeanSpan, object, None, None, random.getrandbits, None, None, None)


def test_a_failing_sampler_raises_through_the_start():
    def decide(parent, trace_id, links):
        raise RuntimeError("sampler broke")

    provider = LeanTracerProvider(decide, {})
    with pytest.raises(RuntimeError, match="sampler broke"):
        provider.get_tracer("t").start_request_span("m", None, SpanKind.SERVER, {})


def test_the_python_twin_passes_the_tracer_and_encoder_tests():
    """``SIDECAR_LEAN_SPAN=python``: what runs where the C core is not built."""
    env = {**os.environ, lean_tracing.SPAN_CORE_ENV: "python"}
    code = "from sidecar.telemetry import lean_tracing as t; print(t.SPAN_CORE, t.LeanSpan.__mro__[1].__name__)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["python", "_PySpanCore"]
    files = [str(TESTS / name) for name in ("test_lean_tracing.py", "test_otlp_native.py", "test_span_export.py")]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout


def test_entering_in_c_is_entering_in_python():
    """``enter_current``/``leave_current``/``current_span`` (C) against ``enter_span``/``leave_span`` and
    the API's ``get_current_span``: nested entries undone in order, other context values kept, a token
    of another context or a used one ignored, a value under the span key that is no span not current."""
    import contextvars

    from opentelemetry import context as otel_context
    from opentelemetry.trace.propagation import _SPAN_KEY

    assert lean_tracing.enter_current is _native.enter_current
    assert lean_tracing.current_span is _native.current_span
    provider, _ = _provider()
    tracer = provider.get_tracer("t")
    outer, inner = (tracer.start_request_span(n, None, SpanKind.SERVER, {}) for n in ("outer", "inner"))
    marker = otel_context.create_key("kept")
    api = otel_context.attach(otel_context.set_value(marker, 7))
    remote = trace.NonRecordingSpan(SpanContext(1, 2, True, TraceFlags(0)))
    for enter, leave in (
        (lean_tracing.enter_current, lean_tracing.leave_current),
        (lean_tracing.enter_span, lean_tracing.leave_span),
    ):
        for current in (lean_tracing.current_span, trace.get_current_span):
            assert current() is trace.INVALID_SPAN
        first = enter(outer)
        assert trace.get_current_span() is outer is lean_tracing.current_span() and otel_context.get_value(marker) == 7
        second = enter(remote)
        assert trace.get_current_span() is remote is lean_tracing.current_span() and otel_context.get_value(marker) == 7
        leave(second)
        assert trace.get_current_span() is outer is lean_tracing.current_span()
        leave(contextvars.copy_context().run(enter, inner))  # a token of another context: ignored here
        leave(second)  # used already: ignored
        assert trace.get_current_span() is outer is lean_tracing.current_span()
        leave(first)
        assert trace.get_current_span() is trace.INVALID_SPAN is lean_tracing.current_span()
        assert otel_context.get_value(marker) == 7
    odd = otel_context.attach(otel_context.set_value(_SPAN_KEY, "not a span"))
    assert trace.get_current_span() is trace.INVALID_SPAN is lean_tracing.current_span()
    otel_context.detach(odd)
    otel_context.detach(api)
    lean_tracing.leave_current(None)  # nothing to undo


def test_the_c_sink_queues_encoded_spans_refuses_and_wakes_as_on_end_does():
    import collections

    from sidecar.telemetry.otlp import TraceEncoder

    provider, _ = _provider()
    tracer = provider.get_tracer("sidecar.protocol", "1.0")
    queue: collections.deque = collections.deque()
    refused: list[str] = []
    wakes: list[int] = []
    calls: list[object] = []

    def at_end(span):
        calls.append(span)
        raise ValueError("never on the request path")

    encoder = TraceEncoder({"service.name": "core-test"})
    sink = _native.SpanSink(queue, 4, 2, lambda: wakes.append(len(queue)), refused.append, encoder.at_end, encoder)
    spans = [tracer.start_request_span(f"s{i}", None, SpanKind.SERVER, {"i": i}) for i in range(5)]
    for span in spans:
        span.end()
        sink(span)
    assert len(queue) == 4 and refused == ["queue_full"] and wakes == [2]
    # the first scope's spans: the field alone (bytes, which the garbage collector does not track)
    assert sink.bytes_scope is encoder.bytes_scope is tracer.scope
    assert list(queue) == [native_span_field(span) for span in spans[:4]]
    assert encoder.encode(list(queue)) == TraceEncoder({"service.name": "core-test"}).encode(spans[:4])
    queue.clear()
    other_scope = provider.get_tracer("sidecar.batching").start_request_span("b", None, SpanKind.INTERNAL, {})
    other_scope.end()
    sink(other_scope)  # another scope: (scope, field)
    assert list(queue) == [(other_scope.scope, native_span_field(other_scope))]
    assert encoder.encode([*queue, native_span_field(spans[0])]) == TraceEncoder({"service.name": "core-test"}).encode(
        [other_scope, spans[0]]
    )
    queue.clear()
    sink.stopping = True
    sink(spans[0])
    assert refused == ["queue_full", "shutdown"] and not queue
    # not encoded here: at_end's answer, or the span itself where at_end fails or gives None
    plain = _native.SpanSink(queue, 8, 8, lambda: None, refused.append, at_end, None)
    plain(spans[1])
    assert list(queue) == [spans[1]] and calls == [spans[1]]
    queue.clear()
    twin = _native.SpanSink(queue, 8, 8, lambda: None, refused.append, lambda span: ("made", span.name), encoder)
    other = _PySpanCore("py", spans[2]._context, None, SpanKind.SERVER, {}, (), Scope("t", ""), print, 1)
    twin(other)
    assert list(queue) == [("made", "py")]
    with pytest.raises(TypeError, match="one positional"):
        twin()


class _Ctx:
    def __init__(self, metadata: tuple = (), code: object = None) -> None:
        self._metadata, self._code = metadata, code

    def invocation_metadata(self) -> tuple:
        return self._metadata

    def code(self) -> object:
        return self._code

    def details(self) -> str:
        return ""


def test_the_c_call_start_and_end_make_the_python_paths_span():
    """The RPC wrapper's C start (``CallStart``: metadata tapped, no caller trace context, a serialized
    request) and OK end (``finish_ok``) against its Python ``_start``/``_finish``: the same span; every
    other call (a caller's traceparent, untapped metadata, a request object, a failed call) takes Python's."""
    import asyncio
    import contextvars

    from sidecar.protocol.interceptors import observed
    from sidecar.protocol.registration import CALL_METADATA

    class Servicer:
        async def ModelInfer(self, request, context):
            span = trace.get_current_span()
            if isinstance(span, LeanSpan):
                span.attributes["model.name"] = "mlp"  # as the repository does
            if request == b"fail":
                raise ValueError("broken")
            return span

    provider, keep = _provider()
    servicer = observed(Servicer(), "inference.GRPCInferenceService", provider.get_tracer("sidecar.protocol"), None)
    call = servicer.ModelInfer
    wrapper = call.__closure__  # the _Call is reachable through the wrapper's closure
    calls = [c.cell_contents for c in wrapper if type(c.cell_contents).__name__ == "_Call"]
    assert calls and type(calls[0]._start_call) is _native.CallStart and calls[0]._finish_ok is _native.finish_ok

    def serve(request, metadata, tapped=True):
        def run():
            if tapped:
                CALL_METADATA.set(metadata)
            return asyncio.run(call(request, _Ctx(metadata)))

        return contextvars.copy_context().run(run)

    plain = (("user-agent", "grpc-c++"), (b"bin-key", b"x"))
    current = serve(b"\x0a\x03mlp", plain)
    fast = keep.spans[-1]
    assert current is fast and fast.parent is None and fast.kind is SpanKind.SERVER and not fast.is_recording()
    assert fast.attributes == {
        "rpc.system.name": "grpc",
        "rpc.method": "inference.GRPCInferenceService/ModelInfer",
        "model.name": "mlp",
        "rpc.status_code": "OK",
    }
    assert trace.get_current_span() is trace.INVALID_SPAN  # left on the way out
    for request, metadata, tapped in (
        (b"\x0a\x03mlp", plain, False),  # the metadata not tapped: Python's start
        (memoryview(b"\x0a\x03mlp"), plain, True),
        (type("Req", (), {"model_name": "mlp", "model_version": ""})(), plain, True),
    ):
        current = serve(request, metadata, tapped)
        assert current is keep.spans[-1] and keep.spans[-1].attributes == fast.attributes
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    for key in ("traceparent", "tracestate"):
        traced = ((key, header),) if key == "traceparent" else (("traceparent", header), (key, "v=1"))
        current = serve(b"\x0a\x03mlp", plain + traced)
        assert current.parent.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736  # the caller's trace, continued
    with pytest.raises(ValueError, match="broken"):
        serve(b"fail", plain)
    failed = keep.spans[-1]
    assert failed.attributes["rpc.status_code"] == "UNKNOWN" and failed.attributes["error.type"] == "ValueError"
    assert failed.status_code is StatusCode.ERROR
    ended = len(keep.spans)
    _native.finish_ok(failed, None)  # an ended span: nothing more
    assert len(keep.spans) == ended and failed.attributes["rpc.status_code"] == "UNKNOWN"
    with pytest.raises(TypeError, match="lean span"):
        _native.finish_ok(trace.INVALID_SPAN, None)
    with pytest.raises(TypeError):
        calls[0]._start_call(_Ctx())


def test_the_c_call_start_takes_only_the_common_call():
    import contextvars

    from sidecar.protocol.registration import CALL_METADATA

    provider, _ = _provider()
    starter = provider.get_tracer("sidecar.protocol").start_request_span.__self__
    slow_calls = []

    def slow(context, request):
        slow_calls.append(request)
        return "slow", None, context

    start = _native.CallStart(starter, "s/M", SpanKind.SERVER, {"rpc.method": "s/M"}, CALL_METADATA, slow)

    def run(metadata, request):
        def inner():
            if metadata is not None:
                CALL_METADATA.set(metadata)
            got = start("ctx", request)
            if got[1] is not None:
                lean_tracing.leave_current(got[1])
            return got

        return contextvars.copy_context().run(inner)

    span, token, ctx = run((("user-agent", "x"),), b"\x0a\x01m")
    assert isinstance(span, LeanSpan) and token is not None and ctx == "ctx" and slow_calls == []
    assert span.attributes == {"rpc.method": "s/M"} and span.name == "s/M"
    for metadata, request in (
        (None, b""),  # not tapped
        ((("traceparent", "00-1-2-01"),), b""),
        ((("tracestate", "a=b"),), b""),
        ([("user-agent", "x")], "a str request"),
        ((("user-agent", "x"), "not a pair"), b""),
    ):
        assert run(metadata, request)[0] == "slow"
    assert len(slow_calls) == 5
    unsampled = LeanTracerProvider(decision("traceidratio", 0.0), {}).get_tracer("t").start_request_span.__self__
    never = _native.CallStart(unsampled, "s/M", SpanKind.SERVER, {}, CALL_METADATA, slow)
    assert contextvars.copy_context().run(lambda: (CALL_METADATA.set(()), never("c", b""))[1]) == (None, None, "c")
