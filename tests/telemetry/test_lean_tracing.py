"""The lean tracer against the OpenTelemetry API and SDK, its OTLP encoder against the official messages."""

from __future__ import annotations

import random

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState

from sidecar.telemetry import lean_tracing
from sidecar.telemetry.lean_tracing import LeanSpan, LeanTracerProvider
from sidecar.telemetry.otlp import GrpcSpanExporter, HttpSpanExporter, TraceEncoder
from sidecar.telemetry.propagation import remote_context
from sidecar.telemetry.sampling import configured_sampler, decision
from sidecar.telemetry.settings import SAMPLERS, OtlpTarget
from sidecar.testing.otlp_receiver import OtlpReceiver, attributes

RESOURCE = {"service.name": "lean-test", "service.instance.id": "i-1", "pid": 42}


class Keep:
    def __init__(self) -> None:
        self.spans: list[LeanSpan] = []

    def on_end(self, span: LeanSpan) -> None:
        self.spans.append(span)


def _provider(sampler: str = "parentbased_always_on", ratio: float = 1.0) -> tuple[LeanTracerProvider, Keep]:
    provider = LeanTracerProvider(decision(sampler, ratio), RESOURCE)
    keep = Keep()
    provider.add_span_processor(keep)
    return provider, keep


def _remote(sampled: bool = True, state: TraceState | None = None) -> SpanContext:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    return SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True, flags, state)


def test_spans_work_through_the_api_context_and_propagation():
    provider, keep = _provider()
    tracer = provider.get_tracer("sidecar.test", "1.0")
    with tracer.start_as_current_span("outer", kind=SpanKind.SERVER, attributes={"a": 1}) as outer:
        assert trace.get_current_span() is outer
        assert isinstance(outer, trace.Span) and outer.is_recording()
        inner = tracer.start_span("inner")  # the current span is its parent
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        inner.end()
    assert trace.get_current_span() is trace.INVALID_SPAN
    ctx = outer.get_span_context()
    assert carrier["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"
    assert inner.get_span_context().trace_id == ctx.trace_id and inner.parent == ctx
    assert [s.name for s in keep.spans] == ["inner", "outer"]
    assert outer.start_ns <= inner.start_ns <= inner.end_ns <= outer.end_ns
    # the API's own helpers take lean spans
    with trace.use_span(outer, end_on_exit=False):
        assert trace.get_current_span() is outer


def test_setters_follow_the_sdk_rules():
    provider, keep = _provider()
    span = provider.get_tracer("t").start_span("s", attributes={"keep": "x", "none": None})
    span.set_attributes({"n": 3, "f": 0.5, "skip": None})
    span.update_name("renamed")
    span.set_status(StatusCode.UNSET)
    span.set_status(Status(StatusCode.ERROR, "bad"))
    span.add_event("hello", {"k": "v"}, timestamp=123)
    span.add_link(_remote(), {"why": "test"})
    span.add_link(trace.INVALID_SPAN_CONTEXT)  # dropped: it would dangle
    span.end()
    span.set_attribute("late", 1)  # ended: ignored
    span.set_status(StatusCode.OK)
    span.end()  # a second end() does nothing
    assert keep.spans == [span]
    assert span.attributes == {"keep": "x", "n": 3, "f": 0.5}
    assert span.name == "renamed"
    assert (span.status_code, span.status_message) == (StatusCode.ERROR, "bad")
    assert span.events == [("hello", 123, {"k": "v"})]
    assert [link.context for link in span.links] == [_remote()]
    ok = provider.get_tracer("t").start_span("ok")
    ok.set_status(StatusCode.OK)
    ok.set_status(StatusCode.ERROR, "too late")  # OK is final
    assert ok.status_code is StatusCode.OK


def test_exceptions_are_recorded_as_the_sdk_does():
    provider, keep = _provider()
    tracer = provider.get_tracer("t")
    with pytest.raises(ValueError), tracer.start_as_current_span("fails"):
        raise ValueError("boom")
    with pytest.raises(KeyError), tracer.start_as_current_span("quiet", record_exception=False):
        raise KeyError("k")
    with pytest.raises(RuntimeError), tracer.start_span("plain") as span:
        raise RuntimeError("x")
    fails, quiet, plain = keep.spans
    assert fails.status_code is StatusCode.ERROR and fails.status_message == "ValueError: boom"
    name, _, attrs = fails.events[0]
    assert name == "exception" and attrs["exception.type"] == "ValueError" and "boom" in attrs["exception.stacktrace"]
    assert quiet.status_code is StatusCode.ERROR and not quiet.events
    assert plain is span and plain.events[0][2]["exception.message"] == "x"
    with tracer.start_as_current_span("cancelled") as span:  # not an error: BaseException is not recorded
        try:
            raise GeneratorExit
        except GeneratorExit:
            pass
    assert keep.spans[-1].status_code is StatusCode.UNSET


def test_unsampled_spans_do_not_record_and_propagate_the_decision():
    provider, keep = _provider("parentbased_traceidratio", 0.0)
    tracer = provider.get_tracer("t")
    root = tracer.start_span("root")
    assert not root.is_recording() and not isinstance(root, LeanSpan)
    ctx = root.get_span_context()
    assert ctx.is_valid and not ctx.trace_flags.sampled
    child = tracer.start_span("child", context=trace.set_span_in_context(root))
    assert not child.is_recording() and child.get_span_context().trace_id == ctx.trace_id
    # a sampled remote parent wins over the ratio; its trace state is kept
    state = TraceState([("vendor", "v1")])
    remote = tracer.start_span(
        "server", context=trace.set_span_in_context(trace.NonRecordingSpan(_remote(True, state)))
    )
    assert remote.is_recording() and remote.get_span_context().trace_state == state
    # a root span linking to a sampled span is recorded (batch spans)
    batch = tracer.start_span("batch", links=[Link(remote.get_span_context())])
    assert batch.is_recording()
    root.end(), child.end(), remote.end(), batch.end()
    assert [s.name for s in keep.spans] == ["server", "batch"]


@pytest.mark.parametrize("name", SAMPLERS)
def test_decision_matches_the_sdk_samplers(name):
    rng = random.Random(7)
    for ratio in (0.0, 0.01, 0.5, 1.0):
        decide = decision(name, ratio)
        sampler = configured_sampler(name, ratio)
        for _ in range(300):
            trace_id = rng.getrandbits(128) or 1
            parent = rng.choice([None, _remote(True), _remote(False)])
            links = rng.choice([None, [], [Link(_remote(True))], [Link(_remote(False))]])
            context = trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent is not None else None
            expected = sampler.should_sample(context, trace_id, "x", links=links).decision
            assert decide(parent, trace_id, links) is (expected is Decision.RECORD_AND_SAMPLE), (ratio, parent, links)


def test_encoder_writes_what_the_official_classes_read():
    provider, keep = _provider()
    state = TraceState([("vendor", "v1"), ("other", "x")])
    parent = trace.set_span_in_context(trace.NonRecordingSpan(_remote(True, state)))
    server = provider.get_tracer("sidecar.protocol", "2.0").start_span(
        "inference.GRPCInferenceService/ModelInfer", context=parent, kind=SpanKind.SERVER
    )
    values = {
        "str": "é ✓",
        "true": True,
        "false": False,
        "int": 12345678901,
        "neg": -5,
        "zero": 0,
        "float": 0.125,
        "strs": ["a", "b"],
        "ints": (1, -2),
        "bytes": b"\x00\x01",
    }
    server.set_attributes(values)
    server.add_event("evt", {"n": 1}, timestamp=1_000)
    server.set_status(StatusCode.ERROR, "went wrong")
    server.end()
    batch = provider.get_tracer("sidecar.batching").start_span(
        "sidecar.batch", links=[Link(server.get_span_context(), {"why": "served"})], attributes={"rows": 3}
    )
    batch.end()
    message = ExportTraceServiceRequest.FromString(TraceEncoder(RESOURCE).encode(keep.spans))
    (rs,) = message.resource_spans
    assert attributes(rs.resource.attributes) == RESOURCE
    scopes = {ss.scope.name: ss for ss in rs.scope_spans}
    assert scopes["sidecar.protocol"].scope.version == "2.0" and scopes["sidecar.batching"].scope.version == ""
    (s,) = scopes["sidecar.protocol"].spans
    ctx = server.get_span_context()
    assert s.trace_id == _remote().trace_id.to_bytes(16, "big") == ctx.trace_id.to_bytes(16, "big")
    assert s.span_id == ctx.span_id.to_bytes(8, "big")
    assert s.parent_span_id == _remote().span_id.to_bytes(8, "big")
    assert s.trace_state == "vendor=v1,other=x"
    assert s.name == "inference.GRPCInferenceService/ModelInfer" and s.kind == s.SPAN_KIND_SERVER
    assert (s.start_time_unix_nano, s.end_time_unix_nano) == (server.start_ns, server.end_ns)
    got = attributes(s.attributes)
    assert got["strs"].values[0].string_value == "a" and got["ints"].values[1].int_value == -2
    assert {k: v for k, v in got.items() if k not in ("strs", "ints")} == {
        k: v for k, v in values.items() if k not in ("strs", "ints")
    }
    assert s.events[0].name == "evt" and s.events[0].time_unix_nano == 1_000
    assert attributes(s.events[0].attributes) == {"n": 1}
    assert (s.status.code, s.status.message) == (s.status.STATUS_CODE_ERROR, "went wrong")
    assert s.flags == 0x301  # sampled, remote parent
    (b,) = scopes["sidecar.batching"].spans
    assert not b.parent_span_id and b.kind == b.SPAN_KIND_INTERNAL and b.flags == 0x101
    (link,) = b.links
    assert (link.trace_id, link.span_id) == (s.trace_id, s.span_id) and link.trace_state == "vendor=v1,other=x"
    assert attributes(link.attributes) == {"why": "served"}
    assert attributes(b.attributes) == {"rows": 3} and b.status.code == b.status.STATUS_CODE_UNSET


@pytest.mark.parametrize(
    "header",
    [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        "  00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-4bf92f3577b34da6a3ce929d0e0e47_6-00f067aa0ba902b7-01",
        "garbage",
        "",
    ],
)
def test_traceparent_parsing_agrees_with_the_api_propagator(header):
    state = "vendor=v1,other=x"
    expected = trace.get_current_span(
        TraceContextTextMapPropagator().extract({"traceparent": header, "tracestate": state})
    )
    parsed = remote_context(header, state)
    got = trace.get_current_span(parsed) if parsed is not None else trace.INVALID_SPAN
    assert got.get_span_context() == expected.get_span_context()
    if parsed is not None:
        assert got.get_span_context().is_remote and got.get_span_context().trace_state == TraceState.from_header(
            [state]
        )


def _target(endpoint: str, protocol: str, compression: str = "") -> OtlpTarget:
    return OtlpTarget(protocol, endpoint, (("x-tenant", "t1"),), 5.0, True, compression)


@pytest.mark.parametrize("compression", ["", "gzip"])
def test_exporters_deliver_to_a_real_receiver(compression):
    provider, keep = _provider()
    for i in range(3):
        provider.get_tracer("t").start_span(f"span-{i}").end()
    with OtlpReceiver() as otlp:
        grpc_exporter = GrpcSpanExporter(_target(otlp.grpc_endpoint, "grpc", compression), RESOURCE)
        http_exporter = HttpSpanExporter(
            _target(otlp.http_endpoint + "/v1/traces", "http/protobuf", compression), RESOURCE
        )
        try:
            assert grpc_exporter.export(keep.spans) and http_exporter.export(keep.spans)
        finally:
            grpc_exporter.shutdown()
            http_exporter.shutdown()
        spans = otlp.spans()
        headers = otlp.headers
    assert sorted((s.protocol, s.name) for s in spans) == sorted(
        (p, f"span-{i}") for p in ("grpc", "http") for i in range(3)
    )
    assert all(s.resource == RESOURCE for s in spans)
    assert all(h.get("x-tenant") == "t1" for h in headers)


def test_exporters_report_a_dead_collector_quickly():
    provider, keep = _provider()
    provider.get_tracer("t").start_span("s").end()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for exporter in (
        GrpcSpanExporter(OtlpTarget("grpc", f"http://127.0.0.1:{port}", (), 0.3, True, ""), RESOURCE),
        HttpSpanExporter(
            OtlpTarget("http/protobuf", f"http://127.0.0.1:{port}/v1/traces", (), 0.3, True, ""), RESOURCE
        ),
    ):
        with pytest.raises(ConnectionError):
            exporter.export(keep.spans)
        exporter.shutdown()


def test_context_detach_restores_the_previous_span():
    provider, _ = _provider()
    tracer = provider.get_tracer("t")
    outer = tracer.start_span("outer")
    token = otel_context.attach(trace.set_span_in_context(outer))
    try:
        with tracer.start_as_current_span("inner") as inner:
            assert trace.get_current_span() is inner and inner.parent == outer.get_span_context()
        assert trace.get_current_span() is outer
    finally:
        otel_context.detach(token)


def test_a_bare_link_reads_as_the_apis_link():
    provider, _ = _provider()
    context = provider.get_tracer("t").start_span("s").get_span_context()
    bare, api = lean_tracing.BareLink((context,)), Link(context)
    assert (bare.context, bare.attributes, bare.dropped_attributes) == (api.context, api.attributes, 0)
    assert bare.context is context


def test_entering_a_span_directly_is_what_the_api_does():
    """``enter_span``/``leave_span`` set the API's context variable directly (the default runtime
    context): the span is current to the API, other context values stay, leaving restores."""
    assert lean_tracing.enter_span is not lean_tracing._api_enter  # the direct pair is in use here
    provider, _ = _provider()
    tracer = provider.get_tracer("t")
    outer, inner = tracer.start_span("outer"), tracer.start_span("inner")
    key = otel_context.create_key("kept")
    before = otel_context.get_current()
    api = otel_context.attach(otel_context.set_value(key, "v"))
    first = lean_tracing.enter_span(outer)
    assert trace.get_current_span() is outer and otel_context.get_value(key) == "v"
    second = lean_tracing.enter_span(inner)
    assert trace.get_current_span() is inner and otel_context.get_value(key) == "v"
    lean_tracing.leave_span(second)
    assert trace.get_current_span() is outer
    lean_tracing.leave_span(first)
    assert trace.get_current_span() is trace.INVALID_SPAN and otel_context.get_value(key) == "v"
    otel_context.detach(api)
    assert otel_context.get_current() is before
    lean_tracing.leave_span(first)  # a spent token is ignored, as detach ignores it (no exception)


class _Context:
    """What the RPC wrapper reads of a grpc.aio ServicerContext."""

    def __init__(self, metadata: tuple = (), code: object = None, details: str = "") -> None:
        self._metadata, self._code, self._details = metadata, code, details

    def invocation_metadata(self) -> tuple:
        return self._metadata

    def code(self) -> object:
        return self._code

    def details(self) -> str:
        return self._details


def test_rpc_wrapper_records_server_faults_and_continues_the_callers_trace():
    import asyncio

    import grpc

    from sidecar.protocol.interceptors import observed

    provider, keep = _provider()

    class Servicer:
        async def ModelInfer(self, request, context):
            assert trace.get_current_span().is_recording()  # the server span is current inside
            if request.model_name == "crash":
                raise RuntimeError("kaput")
            return "ok"

    servicer = observed(Servicer(), "inference.GRPCInferenceService", provider.get_tracer("sidecar.protocol"), None)
    request = type("Req", (), {"model_name": "mlp", "model_version": "1.0.0"})()
    crash = type("Req", (), {"model_name": "crash", "model_version": ""})()
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    async def main() -> None:
        assert await servicer.ModelInfer(request, _Context((("traceparent", header),))) == "ok"
        with pytest.raises(RuntimeError):
            await servicer.ModelInfer(crash, _Context())
        await servicer.ModelInfer(request, _Context(code=grpc.StatusCode.UNAVAILABLE, details="overloaded"))

    asyncio.run(main())
    ok, crashed, unavailable = keep.spans
    assert ok.kind is SpanKind.SERVER and ok.parent == _remote() and ok.parent.is_remote
    assert ok.attributes["model.name"] == "mlp" and ok.attributes["rpc.status_code"] == "OK"
    assert ok.status_code is StatusCode.UNSET
    assert crashed.attributes["rpc.status_code"] == "UNKNOWN" and crashed.attributes["error.type"] == "RuntimeError"
    assert (crashed.status_code, crashed.status_message) == (StatusCode.ERROR, "RuntimeError")
    assert unavailable.attributes["error.type"] == "UNAVAILABLE"
    assert (unavailable.status_code, unavailable.status_message) == (StatusCode.ERROR, "overloaded")


def test_unsampled_calls_have_no_span_and_the_servicer_reads_the_same_metadata():
    import asyncio

    import grpc

    from sidecar.protocol.interceptors import observed

    seen = []

    class Servicer:
        async def ModelInfer(self, request, context):
            seen.append((trace.get_current_span(), context.invocation_metadata(), context.time_remaining()))
            if request.model_name == "abort":
                await context.abort(grpc.StatusCode.NOT_FOUND, "gone")  # forwarded to the real context
            return "ok"

    class Context(_Context):
        def __init__(self, metadata: tuple = ()) -> None:
            super().__init__(metadata)
            self.reads = 0
            self.aborted = None

        def invocation_metadata(self) -> tuple:
            self.reads += 1
            return super().invocation_metadata()

        def time_remaining(self) -> float:
            return 1.5

        async def abort(self, code, details):
            self.aborted = (code, details)
            raise RuntimeError("aborted")

    unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    request = type("Req", (), {"model_name": "mlp", "model_version": ""})()
    aborting = type("Req", (), {"model_name": "abort", "model_version": ""})()
    for sampler, header in (("parentbased_always_on", unsampled), ("parentbased_traceidratio", None)):
        provider, keep = _provider(sampler, 0.0)
        servicer = observed(Servicer(), "s", provider.get_tracer("sidecar.protocol"), None)
        metadata = (("user-agent", "x"),) + ((("traceparent", header),) if header else ())
        context = Context(metadata)
        assert asyncio.run(servicer.ModelInfer(request, context)) == "ok"
        span, read, remaining = seen[-1]
        assert not keep.spans and not span.is_recording()  # no span object recorded
        if header:  # the caller's context is current, not sampled: an upstream call carries that on
            ctx = span.get_span_context()
            assert type(span) is trace.NonRecordingSpan and ctx.is_remote and not ctx.trace_flags.sampled
            assert (ctx.trace_id, ctx.span_id) == (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7)
        else:
            assert span is trace.INVALID_SPAN  # nothing made current
        assert read == metadata and remaining == 1.5 and context.reads == 1  # read once, shared
        with pytest.raises(RuntimeError):
            asyncio.run(servicer.ModelInfer(aborting, context))
        assert context.aborted == (grpc.StatusCode.NOT_FOUND, "gone")


def test_a_sampled_caller_gets_a_server_span_with_its_model_attributes():
    import asyncio

    from sidecar.protocol.interceptors import observed

    class Servicer:
        async def ModelInfer(self, request, context):
            return trace.get_current_span()

    provider, keep = _provider("parentbased_traceidratio", 0.0)  # the caller's sampled flag wins
    servicer = observed(Servicer(), "inference.GRPCInferenceService", provider.get_tracer("sidecar.protocol"), None)
    request = type("Req", (), {"model_name": "mlp", "model_version": "2.0.0"})()
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    current = asyncio.run(servicer.ModelInfer(request, _Context((("traceparent", header.encode()),))))
    (span,) = keep.spans
    assert current is span and span.parent == _remote() and span.kind is SpanKind.SERVER
    assert span.name == "inference.GRPCInferenceService/ModelInfer"
    assert span.attributes == {
        "rpc.system.name": "grpc",
        "rpc.method": "inference.GRPCInferenceService/ModelInfer",
        "model.name": "mlp",
        "model.version": "2.0.0",
        "rpc.status_code": "OK",
    }


def test_the_rpc_wrapper_takes_any_api_tracer():
    import asyncio

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from sidecar.protocol.interceptors import observed

    class Servicer:
        async def ModelInfer(self, request, context):
            return trace.get_current_span()

    memory = InMemorySpanExporter()
    provider = TracerProvider(sampler=configured_sampler("parentbased_always_on", 1.0), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    servicer = observed(Servicer(), "s", provider.get_tracer("sdk"), None)
    request = type("Req", (), {"model_name": "mlp", "model_version": ""})()
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    current = asyncio.run(servicer.ModelInfer(request, _Context((("traceparent", header),))))
    (span,) = memory.get_finished_spans()
    assert current.get_span_context() == span.context and span.parent == _remote()
    assert span.attributes["model.name"] == "mlp" and span.attributes["rpc.status_code"] == "OK"


@pytest.mark.parametrize("encoder", ["native", "python"])
def test_the_encoder_lets_go_of_the_gil_during_a_long_batch(monkeypatch, encoder):
    import types

    from sidecar.telemetry import otlp

    if encoder == "python":
        monkeypatch.setattr(otlp, "native_span_field", None)
    # a span the C encoder takes is a sixteenth of the work of one Python encodes
    every = TraceEncoder.YIELD_EVERY * (TraceEncoder.NATIVE_WEIGHT if encoder == "native" else 1)
    provider, keep = _provider()
    tracer = provider.get_tracer("t")
    for i in range(2 * every + 5):
        tracer.start_span(f"span-{i}").end()
    sleeps = []
    monkeypatch.setattr(otlp, "time", types.SimpleNamespace(sleep=sleeps.append))
    message = ExportTraceServiceRequest.FromString(TraceEncoder(RESOURCE).encode(keep.spans))
    assert sleeps == [0, 0]  # the event loop never waits for a whole batch
    assert len(message.resource_spans[0].scope_spans[0].spans) == len(keep.spans)


def test_a_serialized_infer_request_gives_its_model_name_and_version():
    from sidecar.protocol._generated import grpc_service_pb2 as pb
    from sidecar.protocol.interceptors import model_of

    request = pb.ModelInferRequest(model_name="mlp", model_version="1.0.0", id="r1")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(b"\0" * 16)
    encoded = request.SerializeToString()
    assert model_of(encoded) == ("mlp", "1.0.0")
    assert model_of(pb.ModelInferRequest(model_name="m\u00e9", id="x").SerializeToString()) == ("m\u00e9", "")
    assert model_of(pb.ModelInferRequest(model_version="2").SerializeToString()) == ("", "2")
    long_name = "n" * 300  # a two-byte length
    assert model_of(pb.ModelInferRequest(model_name=long_name).SerializeToString()) == (long_name, "")
    # Not a message, cut short, or not UTF-8: no attributes rather than an error (the servicer rejects it).
    for bad in (b"", b"\xff\xff", encoded[:3], b"\x0a\x02\xff\xfe"):
        assert model_of(bad) == ("", "")


def test_sampled_spans_carry_the_apis_own_span_contexts():
    provider, _ = _provider()
    span = provider.get_tracer("t").start_span("s")
    ctx = span.get_span_context()
    assert ctx == SpanContext(ctx.trace_id, ctx.span_id, False, TraceFlags(TraceFlags.SAMPLED))
    assert ctx.is_valid and ctx.trace_flags.sampled and not ctx.is_remote and type(ctx) is SpanContext


def test_the_current_span_is_restored_and_a_foreign_token_is_ignored():
    import contextvars

    from sidecar.telemetry.lean_tracing import enter_current, leave_current
    from sidecar.telemetry.spans import current_span

    provider, _ = _provider()
    with provider.get_tracer("t").start_as_current_span("shadow") as span:
        assert current_span() is span is trace.get_current_span()
    assert current_span() is trace.INVALID_SPAN
    token = enter_current(span)
    assert current_span() is span is trace.get_current_span()
    leave_current(contextvars.copy_context().run(enter_current, span))  # entered there, left here: ignored
    assert current_span() is span
    leave_current(token)
    leave_current(token)  # used already: ignored
    assert current_span() is trace.INVALID_SPAN
