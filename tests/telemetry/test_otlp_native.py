"""The C span encoder (sidecar/telemetry/_otlp_native.c) writes exactly the bytes of the Python one, and
hands every span it does not take back to it."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import Link, SpanContext, SpanKind, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from sidecar.protobuf_wire import varint
from sidecar.telemetry import otlp
from sidecar.telemetry.lean_tracing import BareLink, LeanSpan, LeanTracerProvider
from sidecar.telemetry.otlp import TraceEncoder, encode_span
from sidecar.telemetry.sampling import decision
from sidecar.testing.otlp_receiver import attributes

RESOURCE = {"service.name": "native-test"}


class _StrSub(str):
    def __str__(self) -> str:
        return "other text"


def _python_field(span: LeanSpan) -> bytes:
    body = encode_span(span)
    return b"\x12" + varint(len(body)) + body


def _tracer(scope: str, version: str | None = None) -> tuple[Any, list[LeanSpan]]:
    """A lean tracer, and the list its ended spans go to."""
    kept: list[LeanSpan] = []

    class Keep:
        def on_end(self, span: LeanSpan) -> None:
            kept.append(span)

    provider = LeanTracerProvider(decision("parentbased_always_on", 1.0), RESOURCE)
    provider.add_span_processor(Keep())
    return provider.get_tracer(scope, version), kept


def _spans() -> list[LeanSpan]:
    tracer, kept = _tracer("sidecar.protocol", "1.0")
    remote = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True, TraceFlags(1))
    in_remote = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    for kind in SpanKind:
        tracer.start_span(f"kind-{kind.name}", kind=kind).end()
    request = tracer.start_request_span("inference.GRPCInferenceService/ModelInfer", remote, SpanKind.SERVER, {})
    request.attributes.update(
        {
            "rpc.system.name": "grpc",
            "model.name": "mlp",
            "model.version": "1.2.3",
            "sidecar.queue.duration_s": 0.000125,
            "sidecar.batch.rows": 8,
            "rpc.status_code": "OK",
        }
    )
    request.end()
    values = {
        "ascii": "plain",
        "unicode": "é ✓ 漢字",
        "empty": "",
        "long": "x" * 300,
        "true": True,
        "false": False,
        "zero": 0,
        "small": 1023,
        "big": 12345678901,
        "neg": -5,
        "int64_min": -(2**63),
        "wrap": 2**64 + 7,  # Python's encoder writes it modulo 2**64: so must C
        "float": 0.125,
        "nan": float("nan"),
        "none": None,
    }
    with_values = tracer.start_span("values ✓", context=in_remote, attributes=values)
    with_values.end()
    local_parent = tracer.start_span("parent")
    child = tracer.start_span("child", context=trace.set_span_in_context(local_parent))
    child.end()
    local_parent.end()
    tracer.start_span("no attributes").end()
    batch_attributes = {"model.name": "mlp", "sidecar.batch.rows": 3, "sidecar.engine.provider": "CPUExecutionProvider"}
    links = [Link(request.get_span_context()), Link(remote), Link(child.get_span_context(), {})]
    tracer.start_span("sidecar.batch", attributes=batch_attributes, links=links).end()
    linked = tracer.start_linked_span("sidecar.batch", [request, child], dict(batch_attributes))  # bare links
    assert linked is not None and [type(link) for link in linked.links] == [BareLink, BareLink]
    linked.end()
    return kept


def _fallbacks() -> list[LeanSpan]:
    """Spans the C encoder hands back: each has one thing it does not encode."""
    tracer, kept = _tracer("t")
    state = TraceState([("vendor", "v1")])
    stated = SpanContext(0x1234, 0x5678, True, TraceFlags(1), state)
    tracer.start_span("trace state", context=trace.set_span_in_context(trace.NonRecordingSpan(stated))).end()
    with_event = tracer.start_span("event")
    with_event.add_event("evt", {"n": 1}, timestamp=5)
    with_event.end()
    tracer.start_span("link", links=[Link(stated)]).end()
    plain = SpanContext(0x1234, 0x5678, False, TraceFlags(1))
    tracer.start_span("link attributes", links=[Link(plain), Link(plain, {"why": "x"})]).end()
    errored = tracer.start_span("status")
    errored.set_status(StatusCode.ERROR, "failed")
    errored.end()
    tracer.start_span("sequence", attributes={"xs": [1, 2]}).end()
    tracer.start_span("bytes", attributes={"b": b"\x00"}).end()
    tracer.start_span("str subclass", attributes={"s": _StrSub("text")}).end()
    tracer.start_span("surrogate", attributes={"s": "\udcff"}).end()
    tracer.start_span("\udcff surrogate name").end()
    tracer.start_span("key", attributes={_StrSub("k"): 1}).end()
    return kept


def test_the_extension_is_built_and_used():
    # .ci/run installs with a C compiler: the encoder the export thread uses must be the C one there
    assert otlp.ENCODER == "native" and otlp.native_span_field is not None


def test_c_writes_the_bytes_python_writes():
    spans = _spans()
    assert len(spans) >= 10
    for span in spans:
        native = otlp.native_span_field(span)
        assert native is not None, span.name
        assert native == _python_field(span), span.name


def test_what_c_does_not_take_goes_back_to_python():
    spans = _fallbacks()
    for span in spans:
        assert otlp.native_span_field(span) is None, span.name
        assert otlp.span_field(span) == _python_field(span)  # (Python still encodes it)


def test_an_export_request_is_the_same_either_way_and_reads_back(monkeypatch):
    spans = _spans() + _fallbacks()
    native = TraceEncoder(RESOURCE).encode(spans)
    monkeypatch.setattr(otlp, "native_span_field", None)
    python = TraceEncoder(RESOURCE).encode(spans)
    assert native == python
    # (lone surrogates are written as Python's encoder writes them, which protobuf's UTF-8 check refuses)
    readable = [s for s in spans if "surrogate" not in s.name]
    message = ExportTraceServiceRequest.FromString(TraceEncoder(RESOURCE).encode(readable))
    decoded = [s for ss in message.resource_spans[0].scope_spans for s in ss.spans]
    assert len(decoded) == len(readable) == len(spans) - 2
    values = next(s for s in decoded if s.name == "values ✓")
    got = attributes(values.attributes)
    assert got["unicode"] == "é ✓ 漢字" and got["wrap"] == 7 and got["int64_min"] == -(2**63)
    assert got["neg"] == -5 and got["true"] is True and got["float"] == 0.125 and "none" not in got
    assert values.flags == 0x301 and values.parent_span_id == (0x00F067AA0BA902B7).to_bytes(8, "big")
    batch = next(s for s in decoded if s.name == "sidecar.batch")
    assert [(link.span_id, link.flags) for link in batch.links] == [
        (spans[5].get_span_context().span_id.to_bytes(8, "big"), 0x101),
        ((0x00F067AA0BA902B7).to_bytes(8, "big"), 0x301),
        (next(s for s in spans if s.name == "child").get_span_context().span_id.to_bytes(8, "big"), 0x101),
    ]


def test_a_span_mutated_into_an_unencodable_shape_is_not_half_written():
    spans = _spans()
    span = spans[0]
    span.attributes["late"] = object()  # (a setter would refuse after end(); the dict is the span's own)
    assert otlp.native_span_field(span) is None
    field = otlp.span_field(span)
    assert field == _python_field(span) and b"<object object" in field


def test_the_python_encoder_can_be_chosen():
    code = "from sidecar.telemetry import otlp; print(otlp.ENCODER, otlp.native_span_field)"
    env = {**os.environ, otlp.ENCODER_ENV: "python"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["python", "None"]


@pytest.mark.parametrize("bad", ["kinds", "unconfigured"])
def test_configuration_errors_are_reported(bad):
    from sidecar.telemetry import _otlp_native

    if bad == "kinds":
        with pytest.raises(ValueError, match="five SpanKind"):
            _otlp_native.configure((SpanKind.SERVER,), StatusCode.UNSET, None)
    else:
        code = (
            "from sidecar.telemetry import _otlp_native\n"
            "try:\n    _otlp_native.span_field(object())\n"
            "except RuntimeError as e:\n    print('refused:', e)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.startswith("refused: _otlp_native.configure() was not called")
