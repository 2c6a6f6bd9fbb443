"""The real OTLP exporters, from a real sidecar, into an OTLP receiver implementing the collector services."""

from __future__ import annotations

import datetime as dt
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as tc

from sidecar.telemetry import catalog
from sidecar.testing.otlp_receiver import OtlpReceiver
from sidecar.testing.server import ServerThread, config_for_tests

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
UNSAMPLED_TRACE = "0af7651916cd43dd8448eb211c80319c"
MODEL_INFER = "inference.GRPCInferenceService/ModelInfer"


def _input(rows: int = 2) -> tc.InferInput:
    x = np.random.default_rng(rows).random((rows, 64), dtype=np.float32)
    inp = tc.InferInput("input", [rows, 64], "FP32")
    inp.set_data_from_numpy(x)
    return inp


@pytest.fixture(scope="module")
def otlp():
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def traced(model_repository, otlp):
    """A sidecar exporting traces and metrics over OTLP/gRPC, after some traffic."""
    cfg = config_for_tests(
        str(model_repository),
        telemetry={
            "otlp_endpoint": otlp.grpc_endpoint,
            "otlp_headers": "x-tenant=team%20a",
            "span_schedule_delay_ms": 50,
            "metric_export_interval_ms": 300,
            "service_name": "sidecar-under-test",
        },
        batching={"max_queue_delay_ms": 20, "adaptive": False},
    )
    with ServerThread(cfg) as srv:
        client = tc.InferenceServerClient(srv.url)
        client.infer(
            "mlp", [_input(3)], model_version="1.0.0", headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
        )
        client.infer("mlp", [_input(1)], headers={"traceparent": f"00-{UNSAMPLED_TRACE}-{CALLER_SPAN}-00"})
        with pytest.raises(tc.InferenceServerException):
            client.infer("no_such_model", [_input(1)])
        with ThreadPoolExecutor(8) as pool:  # concurrent requests: the dynamic batcher merges some
            list(pool.map(lambda i: client.infer("mlp", [_input(1 + i % 3)], model_version="1.0.0"), range(24)))
        assert srv.app.telemetry.force_flush(5.0)
        yield srv


def test_request_span_continues_the_callers_trace(traced, otlp):
    span = otlp.wait_for_span(lambda s: s.span.trace_id.hex() == CALLER_TRACE)
    assert span.name == MODEL_INFER
    assert span.span.kind == span.span.SPAN_KIND_SERVER
    assert span.span.parent_span_id.hex() == CALLER_SPAN
    attrs = span.attributes
    assert attrs["rpc.system.name"] == "grpc"
    assert attrs["rpc.method"] == MODEL_INFER
    assert attrs["rpc.status_code"] == "OK"
    assert attrs["model.name"] == "mlp"
    assert attrs["model.version"] == "1.0.0"
    assert attrs["sidecar.batch.rows"] >= 3
    assert attrs["sidecar.queue.duration_s"] >= 0.0
    assert len(attrs["sidecar.batch.span_id"]) == 16
    assert span.resource["service.name"] == "sidecar-under-test"
    assert span.resource["service.version"]
    assert span.resource["service.instance.id"]
    assert span.resource["host.name"]
    assert span.protocol == "grpc"


def test_batch_span_links_to_the_request_spans_it_served(traced, otlp):
    request = otlp.wait_for_span(lambda s: s.span.trace_id.hex() == CALLER_TRACE)
    batch_id = request.attributes["sidecar.batch.span_id"]
    batch = otlp.wait_for_span(lambda s: s.name == "sidecar.batch" and s.span.span_id.hex() == batch_id)
    links = {(link.trace_id.hex(), link.span_id.hex()) for link in batch.span.links}
    assert (CALLER_TRACE, request.span.span_id.hex()) in links
    assert batch.span.trace_id.hex() != CALLER_TRACE  # a trace of its own, linked, not a child
    attrs = batch.attributes
    assert attrs["model.name"] == "mlp"
    assert attrs["model.version"] == "1.0.0"
    assert attrs["sidecar.engine.provider"] == "CPUExecutionProvider"
    assert attrs["sidecar.batch.rows"] == request.attributes["sidecar.batch.rows"]
    assert attrs["sidecar.batch.requests"] == len(batch.span.links)


def test_a_batch_of_several_requests_links_each_of_them(traced, otlp):
    spans = otlp.spans()
    requests = {s.span.span_id.hex(): s for s in spans if s.name == MODEL_INFER}
    batches = [s for s in spans if s.name == "sidecar.batch" and len(s.span.links) >= 2]
    assert batches, "the dynamic batcher merged no concurrent requests"
    for batch in batches:
        served = [requests[link.span_id.hex()] for link in batch.span.links]
        assert sum(r.attributes["model.name"] == "mlp" for r in served) == len(served)
        assert {r.attributes["sidecar.batch.span_id"] for r in served} == {batch.span.span_id.hex()}
        assert {r.attributes["sidecar.batch.rows"] for r in served} == {batch.attributes["sidecar.batch.rows"]}
        assert batch.attributes["sidecar.batch.rows"] >= len(served)


def test_unsampled_caller_is_respected(traced, otlp):
    assert not [s for s in otlp.spans() if s.span.trace_id.hex() == UNSAMPLED_TRACE]


def test_error_is_recorded_with_the_grpc_status(traced, otlp):
    span = otlp.wait_for_span(lambda s: s.attributes.get("model.name") == "no_such_model")
    assert span.attributes["rpc.status_code"] == "NOT_FOUND"
    assert span.attributes["error.type"] == "NOT_FOUND"
    # NOT_FOUND is the caller's fault: the gRPC conventions leave a server span's status unset.
    assert span.span.status.code == span.span.status.STATUS_CODE_UNSET


def test_metric_names_units_and_attributes(traced, otlp):
    expected = {
        catalog.RPC_DURATION: "s",
        catalog.INFERENCE_REQUESTS: "{request}",
        catalog.INFERENCE_ROWS: "{row}",
        catalog.INFERENCE_DURATION: "s",
        catalog.QUEUE_DURATION: "s",
        catalog.COMPUTE_DURATION: "s",
        catalog.BATCH_ROWS: "{row}",
        catalog.BATCH_EXECUTIONS: "{batch}",
        catalog.QUEUE_DEPTH: "{request}",
        catalog.MODEL_FRESHNESS: "d",
        catalog.PROCESS_CPU_TIME: "s",
        catalog.PROCESS_MEMORY_USAGE: "By",
    }
    for instrument, unit in expected.items():
        metric = otlp.wait_for_metric(instrument.name)
        assert metric.unit == unit, instrument.name
    requests = otlp.wait_for_metric(
        "sidecar.inference.requests",
        lambda m: any(
            _attrs(p) == {"model.name": "mlp", "model.version": "1.0.0", "outcome": "success"} and p.as_int >= 25
            for p in m.points()
        ),
    )
    assert requests.metric.sum.is_monotonic
    assert requests.metric.sum.aggregation_temporality == 2  # cumulative
    assert requests.resource["service.name"] == "sidecar-under-test"

    rpc = otlp.latest_metric("rpc.server.call.duration")
    by_code = {_attrs(p)["rpc.status_code"]: p for p in rpc.points() if _attrs(p)["rpc.method"] == MODEL_INFER}
    assert by_code["OK"].count >= 26 and by_code["NOT_FOUND"].count == 1
    assert _attrs(by_code["OK"]) == {"rpc.system.name": "grpc", "rpc.method": MODEL_INFER, "rpc.status_code": "OK"}
    assert list(by_code["OK"].explicit_bounds) == list(catalog.DURATION_BUCKETS_S)
    assert sum(by_code["OK"].bucket_counts) == by_code["OK"].count

    rows = otlp.latest_metric("sidecar.batch.rows")
    point = next(p for p in rows.points() if _attrs(p)["model.version"] == "1.0.0")
    assert list(point.explicit_bounds) == [float(b) for b in catalog.ROWS_BUCKETS]
    assert point.sum == 3 + sum(1 + i % 3 for i in range(24))  # every row served lands in exactly one batch

    freshness = otlp.latest_metric("sidecar.model.freshness")
    values = {_attrs(p)["model.version"]: p.as_double or p.as_int for p in freshness.points()}
    assert values == {"1.0.0": (dt.date.today() - dt.date(2024, 1, 15)).days}  # only 1.0.0 has a training_date


def test_export_headers_reach_the_collector(traced, otlp):
    otlp.wait_for(lambda: otlp.headers)
    assert any(h.get("x-tenant") == "team a" for h in otlp.headers)


def test_no_gpu_means_no_gpu_instruments_and_one_log_line(model_repository, caplog):
    caplog.set_level(logging.INFO, logger="sidecar.telemetry.gpu")
    cfg = config_for_tests(str(model_repository), telemetry={"metrics_port": 0, "gpu_sample_interval_s": 0.05})
    with ServerThread(cfg) as srv:
        port = srv.app.telemetry.prometheus_port
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "process_cpu_time_seconds_total" in text
    assert "hw_gpu" not in text and "hw_power" not in text
    lines = [r for r in caplog.records if r.name == "sidecar.telemetry.gpu"]
    assert len(lines) == 1 and "GPU metrics off" in lines[0].getMessage()


def _attrs(point) -> dict:
    from sidecar.testing.otlp_receiver import attributes

    return attributes(point.attributes)


def test_otlp_over_http_protobuf(model_repository, otlp):
    cfg = config_for_tests(
        str(model_repository),
        telemetry={
            "otlp_endpoint": otlp.http_endpoint,
            "otlp_protocol": "http/protobuf",
            "otlp_headers": "authorization=Bearer%20t0k3n",
            "span_schedule_delay_ms": 50,
            "metric_export_interval_ms": 60000,
        },
    )
    with ServerThread(cfg) as srv:
        tc.InferenceServerClient(srv.url).infer("mlp", [_input(2)], model_version="1.9.0")
        assert srv.app.telemetry.force_flush(5.0)
        span = otlp.wait_for_span(lambda s: s.protocol == "http" and s.name == MODEL_INFER)
        assert span.attributes["model.version"] == "1.9.0"
        assert otlp.wait_for_span(lambda s: s.protocol == "http" and s.name == "sidecar.batch")
        metric = otlp.wait_for_metric("sidecar.inference.requests", lambda m: m.protocol == "http")
        assert any(_attrs(p).get("model.version") == "1.9.0" and p.as_int == 1 for p in metric.points())
    assert any(h.get("authorization") == "Bearer t0k3n" for h in otlp.headers)


def test_console_export_for_debugging(model_repository, capfd):
    cfg = config_for_tests(str(model_repository), telemetry={"traces_exporter": "console", "sampler": "always_on"})
    with ServerThread(cfg) as srv:
        tc.InferenceServerClient(srv.url).infer("mlp", [_input(1)])
        assert srv.app.telemetry.force_flush(5.0)
    out = capfd.readouterr().out
    assert f'"name": "{MODEL_INFER}"' in out and '"name": "sidecar.batch"' in out


def test_telemetry_off_builds_no_sdk(model_repository):
    cfg = config_for_tests(
        str(model_repository), telemetry={"enabled": False, "otlp_endpoint": "http://127.0.0.1:1", "metrics_port": 0}
    )
    with ServerThread(cfg) as srv:
        tc.InferenceServerClient(srv.url).infer("mlp", [_input(1)])
        t = srv.app.telemetry
        assert t.tracer is None and t.meter_provider is None and t.prometheus_port is None
        assert not t.span_processors and not t.active
        mv = srv.app.repository.get("mlp")
        assert mv.stats.sink is None  # nothing but the statistics Triton reports runs per request


def test_shadow_span_links_to_the_primary_request_span(model_repository, otlp):
    cfg = config_for_tests(
        str(model_repository),
        telemetry={"otlp_endpoint": otlp.grpc_endpoint, "span_schedule_delay_ms": 50, "service_name": "shadowed"},
        routing={"policies": {"mlp": {"weights": {"1.0.0": 100}, "shadows": {"1.9.0": 100}}}},
    )
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4736"
    with ServerThread(cfg) as srv:
        tc.InferenceServerClient(srv.url).infer(
            "mlp", [_input(2)], headers={"traceparent": f"00-{trace_id}-{CALLER_SPAN}-01"}
        )
        request = otlp.wait_for_span(lambda s: s.span.trace_id.hex() == trace_id and s.name == MODEL_INFER)
        shadow = otlp.wait_for_span(
            lambda s: s.name == "sidecar.shadow" and any(link.trace_id.hex() == trace_id for link in s.span.links)
        )
    assert [link.span_id.hex() for link in shadow.span.links] == [request.span.span_id.hex()]
    # the caller named no version: the request span names the one the policy routed it to
    assert request.attributes["model.version"] == "1.0.0"
    assert shadow.span.trace_id.hex() != trace_id and not shadow.span.parent_span_id
    assert shadow.attributes["model.version"] == "1.9.0"
    assert shadow.attributes["sidecar.shadow.primary_version"] == "1.0.0"
    assert shadow.attributes["sidecar.shadow.outcome"] == "ok"
    assert shadow.resource["service.name"] == "shadowed"
    # the shadow's own batch span links to the shadow span
    assert otlp.wait_for_span(
        lambda s: (
            s.name == "sidecar.batch"
            and any(link.span_id == shadow.span.span_id for link in s.span.links)
            and s.attributes["model.version"] == "1.9.0"
        )
    )


def test_unbatched_requests_get_their_run_span_too(model_repository, otlp):
    """With batching off every request runs alone: still one run span, linked to its request span; and an
    untraced request (unsampled caller) makes none."""
    trace_id, unsampled = "5bf92f3577b34da6a3ce929d0e0e4737", "1af7651916cd43dd8448eb211c80319d"
    cfg = config_for_tests(
        str(model_repository),
        telemetry={"otlp_endpoint": otlp.grpc_endpoint, "span_schedule_delay_ms": 50},
        batching={"enabled": False},
    )
    with ServerThread(cfg) as srv:
        client = tc.InferenceServerClient(srv.url)
        client.infer("mlp", [_input(2)], headers={"traceparent": f"00-{trace_id}-{CALLER_SPAN}-01"})
        client.infer("mlp", [_input(1)], headers={"traceparent": f"00-{unsampled}-{CALLER_SPAN}-00"})
        assert srv.app.telemetry.force_flush(5.0)
    request = otlp.wait_for_span(lambda s: s.span.trace_id.hex() == trace_id)
    assert request.attributes["sidecar.batch.rows"] == 2
    assert request.attributes["sidecar.queue.duration_s"] >= 0.0
    run = otlp.wait_for_span(
        lambda s: s.name == "sidecar.batch" and s.span.span_id.hex() == request.attributes["sidecar.batch.span_id"]
    )
    assert [(link.trace_id.hex(), link.span_id.hex()) for link in run.span.links] == [
        (trace_id, request.span.span_id.hex())
    ]
    spans = otlp.spans()
    assert not [s for s in spans if s.span.trace_id.hex() == unsampled]
    assert not [s for s in spans if any(link.trace_id.hex() == unsampled for link in s.span.links)]


def _upstream_repo(path, target: str, **settings) -> str:
    import json

    vdir = path / "m" / "2.0.0"
    vdir.mkdir(parents=True)
    (vdir / "upstream.json").write_text(json.dumps({"target": target, "model": "fake", **settings}))
    return str(path)


def _fake_input(rows: int = 2) -> tc.InferInput:
    inp = tc.InferInput("input", [rows, 4], "FP32")
    inp.set_data_from_numpy(np.arange(rows * 4, dtype=np.float32).reshape(rows, 4))
    return inp


def test_an_upstream_call_carries_the_trace_to_the_upstream(tmp_path, otlp):
    """A forwarded request's upstream call is a CLIENT span, child of the request's server span, and its
    W3C trace context goes with the call: the upstream's own spans continue the caller's trace."""
    from sidecar.testing.upstream import FakeUpstream

    trace_id = "6bf92f3577b34da6a3ce929d0e0e4736"
    with FakeUpstream("fake") as up:
        cfg = config_for_tests(
            _upstream_repo(tmp_path, up.target),
            telemetry={"otlp_endpoint": otlp.grpc_endpoint, "span_schedule_delay_ms": 50},
            batching={"enabled": False},
        )
        with ServerThread(cfg) as srv:
            client = tc.InferenceServerClient(srv.url)
            client.infer("m", [_fake_input()], headers={"traceparent": f"00-{trace_id}-{CALLER_SPAN}-01"})
            sent = dict(up.last_metadata)
            client.infer("m", [_fake_input()])  # no caller context: the sidecar's own trace goes upstream
            root_sent = dict(up.last_metadata)
            unsampled = "1bf92f3577b34da6a3ce929d0e0e4738"
            client.infer("m", [_fake_input()], headers={"traceparent": f"00-{unsampled}-{CALLER_SPAN}-00"})
            unsampled_sent = dict(up.last_metadata)
            assert srv.app.telemetry.force_flush(5.0)
    server = otlp.wait_for_span(lambda s: s.span.trace_id.hex() == trace_id and s.span.kind == 2)  # SERVER
    call = otlp.wait_for_span(lambda s: s.span.trace_id.hex() == trace_id and s.span.kind == 3)  # CLIENT
    assert call.name == MODEL_INFER and call.span.parent_span_id == server.span.span_id
    assert sent["traceparent"] == f"00-{trace_id}-{call.span.span_id.hex()}-01"
    host, port = up.target.rsplit(":", 1)
    assert call.attributes == {
        "rpc.system.name": "grpc",
        "rpc.method": MODEL_INFER,
        "server.address": host,
        "server.port": int(port),
        "model.name": "fake",
        "rpc.status_code": "OK",
    }
    assert call.span.status.code == call.span.status.STATUS_CODE_UNSET
    assert call.span.start_time_unix_nano >= server.span.start_time_unix_nano
    assert call.span.end_time_unix_nano <= server.span.end_time_unix_nano
    root_trace = root_sent["traceparent"].split("-")[1]
    root_call = otlp.wait_for_span(lambda s: s.span.trace_id.hex() == root_trace and s.span.kind == 3)
    root_server = otlp.wait_for_span(lambda s: s.span.trace_id.hex() == root_trace and s.span.kind == 2)
    assert root_call.span.parent_span_id == root_server.span.span_id and not root_server.span.parent_span_id
    # the caller's "not sampled" goes on too (in the same trace, from a span of the sidecar's), and
    # nothing of that trace is recorded
    version, sent_trace, sent_span, flags = unsampled_sent["traceparent"].split("-")
    assert (version, sent_trace, flags) == ("00", unsampled, "00") and sent_span not in (CALLER_SPAN, "0" * 16)
    assert not [s for s in otlp.spans() if s.span.trace_id.hex() == unsampled]


@pytest.mark.parametrize("batching", [False, True])
def test_a_request_the_sidecar_does_not_sample_tells_the_upstream_so(tmp_path, otlp, batching):
    """No caller context and not sampled here (a 0 % ratio): the upstream call carries "not sampled" in a
    trace of its own (fresh ids, flags 00), so that a parent-based sampler upstream does not start
    traces whose root is missing; nothing of that trace is recorded. With telemetry off the call
    carries no trace context at all."""
    from sidecar.testing.upstream import FakeUpstream

    sent = []
    with FakeUpstream("fake") as up:
        for telemetry in (
            {"otlp_endpoint": otlp.grpc_endpoint, "sampler": "parentbased_traceidratio", "sampler_arg": "0"},
            {"enabled": False},
        ):
            cfg = config_for_tests(
                _upstream_repo(tmp_path / str(len(sent)), up.target),
                telemetry=telemetry,
                batching={"enabled": batching, "max_queue_delay_ms": 1},
            )
            with ServerThread(cfg) as srv:
                client = tc.InferenceServerClient(srv.url)
                client.infer("m", [_fake_input()])
                first = dict(up.last_metadata)
                client.infer("m", [_fake_input()])
                sent.append((first, dict(up.last_metadata)))
                if srv.app.telemetry is not None and srv.app.telemetry.active:
                    assert srv.app.telemetry.force_flush(5.0)
    (first, second), (off_first, off_second) = sent
    contexts = [first["traceparent"].split("-"), second["traceparent"].split("-")]
    for version, trace_id, span_id, flags in contexts:
        assert (version, flags) == ("00", "00")
        assert len(trace_id) == 32 and int(trace_id, 16) and len(span_id) == 16 and int(span_id, 16)
    assert contexts[0][1] != contexts[1][1]  # a trace of its own per request
    recorded = {s.span.trace_id.hex() for s in otlp.spans()}
    assert not recorded & {contexts[0][1], contexts[1][1]}
    assert "traceparent" not in off_first and "traceparent" not in off_second


def test_a_batched_upstream_call_is_a_child_of_its_batch_span_and_errors_are_recorded(tmp_path, otlp):
    import grpc

    from sidecar.testing.upstream import FakeUpstream

    trace_id = "7bf92f3577b34da6a3ce929d0e0e4736"
    with FakeUpstream("fake") as up:
        cfg = config_for_tests(
            _upstream_repo(tmp_path, up.target, retries=0),
            telemetry={"otlp_endpoint": otlp.grpc_endpoint, "span_schedule_delay_ms": 50},
            batching={"max_queue_delay_ms": 1},
        )
        with ServerThread(cfg) as srv:
            client = tc.InferenceServerClient(srv.url)
            headers = {"traceparent": f"00-{trace_id}-{CALLER_SPAN}-01"}
            client.infer("m", [_fake_input()], headers=headers)
            batch_context = up.last_metadata["traceparent"]
            up.fail_with = grpc.StatusCode.INTERNAL
            with pytest.raises(tc.InferenceServerException):
                client.infer("m", [_fake_input()], headers=headers)
            assert srv.app.telemetry.force_flush(5.0)
    request = otlp.wait_for_span(
        lambda s: s.span.trace_id.hex() == trace_id and s.span.kind == 2 and s.attributes["rpc.status_code"] == "OK"
    )
    batch = otlp.wait_for_span(
        lambda s: s.name == "sidecar.batch" and s.span.span_id.hex() == request.attributes["sidecar.batch.span_id"]
    )
    call = otlp.wait_for_span(lambda s: s.span.kind == 3 and s.span.parent_span_id == batch.span.span_id)
    assert batch_context == f"00-{batch.span.trace_id.hex()}-{call.span.span_id.hex()}-01"
    assert call.attributes["rpc.status_code"] == "OK"
    failed = otlp.wait_for_span(lambda s: s.span.kind == 3 and s.attributes.get("rpc.status_code") == "INTERNAL")
    assert failed.attributes["error.type"] == "INTERNAL"
    assert failed.span.status.code == failed.span.status.STATUS_CODE_ERROR
    assert "fake upstream failure" in failed.span.status.message
