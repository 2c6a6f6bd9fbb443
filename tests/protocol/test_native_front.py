"""The native front end (``server.front = "native"``, sidecar/protocol/native_front.py) with real clients:
what it adds to ``test_server.py`` (which runs on both fronts; the rest of the suite runs on the default,
native where built): cancellation, deadlines, streams of every kind, an unknown method, the choice of front."""

from __future__ import annotations

import asyncio
import queue
import select
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sidecar.app import choose_front
from sidecar.config import ServerConfig
from sidecar.errors import ConfigError
from sidecar.protocol import native_front
from sidecar.protocol._generated import grpc_service_pb2 as pb
from sidecar.testing.models import mlp_model, write_version
from sidecar.testing.server import ServerThread, config_for_tests

INFER = "/inference.GRPCInferenceService/ModelInfer"


def _request(x: np.ndarray, model: str = "mlp", input_name: str = "input", **fields) -> bytes:
    msg = pb.ModelInferRequest(model_name=model, **fields)
    msg.inputs.add(name=input_name, datatype="FP32", shape=list(x.shape))
    msg.raw_input_contents.append(x.tobytes())
    return msg.SerializeToString()


@pytest.fixture(scope="module")
def server_native(model_repository):
    with ServerThread(config_for_tests(str(model_repository), server={"front": "native"})) as srv:
        assert srv.app.front == "native"
        yield srv


@pytest.fixture(scope="module")
def slow_batches(tmp_path_factory):
    """Triton's rule with a 400 ms window: a lone request waits for company long enough to cancel it."""
    repo = tmp_path_factory.mktemp("repo")
    write_version(repo, "mlp", "1.0.0", mlp_model)
    config = config_for_tests(
        str(repo), server={"front": "native"}, batching={"adaptive": False, "max_queue_delay_ms": 400}
    )
    with ServerThread(config) as srv:
        yield srv


def test_the_native_front_is_built_here_and_chosen_by_auto():
    assert native_front.AVAILABLE  # scripts/system-deps installs libgrpc++-dev before the install builds it
    assert choose_front(ServerConfig(front="auto"))[0] == "native"
    assert choose_front(ServerConfig(front="grpc.aio"))[0] == "grpc.aio"
    assert choose_front(ServerConfig(front="auto", ingest_workers=2))[0] == "grpc.aio"  # they share grpc.aio's port
    with pytest.raises(ValueError, match=r"server\.front must be auto, native or grpc\.aio"):
        ServerConfig(front="fast")


def test_native_front_refused_where_it_is_not_built(monkeypatch):
    monkeypatch.setattr(native_front, "AVAILABLE", False)
    assert choose_front(ServerConfig(front="auto")) == (
        "grpc.aio",
        "the native front end is not built (libgrpc++-dev was missing at install)",
    )
    with pytest.raises(ConfigError, match="not built"):
        choose_front(ServerConfig(front="native"))


def test_a_cancelled_call_never_runs_and_the_next_one_does(slow_batches):
    x = np.ones((1, 64), np.float32)

    async def cancel_one_then_send_one() -> bytes:
        async with grpc.aio.insecure_channel(slow_batches.url) as channel:
            infer = channel.unary_unary(INFER)
            call = infer(_request(x), timeout=30)
            await asyncio.sleep(0.1)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await asyncio.sleep(0.5)  # past the window the cancelled call would have run in
            return await infer(_request(x), timeout=30)

    before = slow_batches.app.repository.get("mlp").stats.inference_count
    answer = pb.ModelInferResponse.FromString(asyncio.run(cancel_one_then_send_one()))
    assert answer.model_name == "mlp"
    assert slow_batches.app.repository.get("mlp").stats.inference_count == before + 1


def test_a_deadline_reaches_the_batcher(slow_batches):
    """The caller's deadline (150 ms) is shorter than the window: the batcher answers DEADLINE_EXCEEDED."""
    with grpc.insecure_channel(slow_batches.url) as channel, pytest.raises(grpc.RpcError) as err:
        channel.unary_unary(INFER)(_request(np.ones((1, 64), np.float32)), timeout=0.15)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_streams_health_watch_and_reflection(server_native):
    client = tc.InferenceServerClient(server_native.url)
    x = np.ones((1, 64), np.float32)
    inp = tc.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(x)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for i in range(3):
        client.async_stream_infer("mlp", [inp], request_id=f"s{i}")
    got = [answers.get(timeout=30) for _ in range(3)]
    client.stop_stream()
    client.close()
    assert [error for _, error in got] == [None, None, None]
    assert [r.get_response().id for r, _ in got] == ["s0", "s1", "s2"]
    with grpc.insecure_channel(server_native.url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        )
        watch = health.Watch(health_pb2.HealthCheckRequest(service="mlp"), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        listed = next(reflect.ServerReflectionInfo(iter([request]), timeout=10))
        names = {s.name for s in listed.list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def test_a_request_that_does_not_decode_is_invalid_argument_and_names_the_method(server_native):
    with grpc.insecure_channel(server_native.url) as channel:
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/inference.GRPCInferenceService/ModelMetadata")(b"\xff\xff\xff", timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ModelMetadata" in err.value.details() and "not a valid message" in err.value.details()
        # the server goes on serving
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        )


def test_an_unknown_method_is_unimplemented_and_names_it(server_native):
    with grpc.insecure_channel(server_native.url) as channel, pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/inference.GRPCInferenceService/NoSuchThing")(b"", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "NoSuchThing" in err.value.details()


@pytest.mark.parametrize("front", ["native", "grpc.aio"])
def test_a_port_in_use_fails_the_start_and_names_it(model_repository, front):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = config_for_tests(str(model_repository), server={"front": front, "grpc_port": port})
        with pytest.raises(OSError, match=f"cannot bind the gRPC port 127.0.0.1:{port}"):
            ServerThread(config).start()


def test_a_stop_with_a_watch_open_ends_it_and_returns(model_repository):
    """A health Watch stays open until its client goes; stopping the server cancels it after the grace
    (its stream ends with a status) and the stop returns: nothing waits on a call nobody finishes."""
    import threading
    import time

    srv = ServerThread(config_for_tests(str(model_repository), server={"front": "native"})).start()
    channel = grpc.insecure_channel(srv.url)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    began = time.monotonic()
    stopper = threading.Thread(target=srv.stop)
    stopper.start()
    statuses = []
    with pytest.raises(grpc.RpcError) as ended:
        for answer in watch:  # NOT_SERVING as the server drains, then the stream ends
            statuses.append(answer.status)
    stopper.join(30)
    assert not stopper.is_alive() and time.monotonic() - began < 20
    assert ended.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
    channel.close()


def test_a_cancelled_reflection_stream_frees_its_pool_thread(server_native):
    """Reflection's handler is synchronous: it reads its requests on a pool thread. A client that goes
    away in the middle of its stream (no half-close) must not leave that thread waiting for a request
    that never comes (it would keep the process from exiting)."""
    import sys
    import threading
    import time

    hold = threading.Event()

    def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        hold.wait(30)  # no half-close: the stream stays open until the call is cancelled

    with grpc.insecure_channel(server_native.url) as channel:
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(requests(), timeout=30)
        assert next(call).list_services_response.service

        def waiting() -> int:  # threads whose stack is inside the handler's request reader
            def reading(frame) -> bool:
                while frame is not None:
                    if frame.f_code.co_name == "requests" and frame.f_code.co_filename.endswith(
                        "protocol/native_front.py"
                    ):
                        return True
                    frame = frame.f_back
                return False

            return sum(1 for frame in sys._current_frames().values() if reading(frame))

        assert waiting() == 1
        call.cancel()
        hold.set()
        deadline = time.monotonic() + 10
        while waiting() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waiting() == 0


@pytest.fixture(scope="module")
def wide_identity(tmp_path_factory):
    """identity_wide: FP32 rows of 32,768 values (128 KiB a row: every request is read in place)."""
    from sidecar.testing.models import identity_model

    repo = tmp_path_factory.mktemp("wide")
    write_version(repo, "identity_wide", "1.0.0", identity_model, dims=(32768,))
    with ServerThread(config_for_tests(str(repo), server={"front": "native"})) as srv:
        yield srv


def test_a_big_request_is_read_in_place_and_answered_exactly(wide_identity, monkeypatch):
    from sidecar.protocol.inference_servicer import InferenceServicer

    seen = []
    real = InferenceServicer._decode_encoded

    def spy(self, encoded, context):
        seen.append(type(encoded))
        return real(self, encoded, context)

    monkeypatch.setattr(InferenceServicer, "_decode_encoded", spy)
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((rows, 32768)).astype(np.float32) for rows in (1, 2, 1, 3)]

    async def send_all() -> list[bytes]:
        async with grpc.aio.insecure_channel(wide_identity.url, options=[("grpc.max_send_message_length", -1)]) as ch:
            infer = ch.unary_unary(INFER)
            calls = [infer(_request(x, "identity_wide", "INPUT0"), timeout=30) for x in xs]
            return await asyncio.gather(*calls)

    answers = asyncio.run(send_all())
    assert seen and all(t is memoryview for t in seen)  # the gRPC slice itself, not a copy
    for x, answer in zip(xs, answers, strict=True):
        resp = pb.ModelInferResponse.FromString(answer)
        got = {
            o.name: np.frombuffer(raw, np.float32).reshape(o.shape)
            for o, raw in zip(resp.outputs, resp.raw_output_contents, strict=True)
        }
        assert np.array_equal(got["OUTPUT0"], x) and np.array_equal(got["OUTPUT1"], x)
    # tritonclient too, and a big message to a method with a deserializer (parsed from the view)
    client = tc.InferenceServerClient(wide_identity.url)
    x = rng.standard_normal((1, 32768)).astype(np.float32)
    inp = tc.InferInput("INPUT0", [1, 32768], "FP32")
    inp.set_data_from_numpy(x)
    assert np.array_equal(client.infer("identity_wide", [inp]).as_numpy("OUTPUT0"), x)
    with grpc.insecure_channel(wide_identity.url) as channel:
        index = channel.unary_unary(
            "/inference.GRPCInferenceService/RepositoryIndex",
            request_serializer=pb.RepositoryIndexRequest.SerializeToString,
            response_deserializer=pb.RepositoryIndexResponse.FromString,
        )(pb.RepositoryIndexRequest(repository_name="r" * 70_000), timeout=10)
    assert [m.name for m in index.models] == ["identity_wide"]
    # a stream whose messages are big: the first is a view, the later ones bytes; answers in order
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    sent = [rng.standard_normal((1, 32768)).astype(np.float32) for _ in range(3)]
    for i, x in enumerate(sent):
        inp = tc.InferInput("INPUT0", [1, 32768], "FP32")
        inp.set_data_from_numpy(x)
        client.async_stream_infer("identity_wide", [inp], request_id=f"w{i}")
    got = [answers.get(timeout=30) for _ in sent]
    client.stop_stream()
    client.close()
    assert [error for _, error in got] == [None, None, None]
    assert [r.get_response().id for r, _ in got] == ["w0", "w1", "w2"]
    for (result, _), x in zip(got, sent, strict=True):
        assert np.array_equal(result.as_numpy("OUTPUT0"), x)


def test_many_concurrent_calls_each_get_their_own_answer(server_native):
    # answers leave through the front's responder thread: none may go to another call
    xs = [np.full((1, 4), i, np.float32) for i in range(300)]

    async def send_all() -> list[bytes]:
        async with grpc.aio.insecure_channel(server_native.url) as channel:
            infer = channel.unary_unary(INFER)
            calls = [infer(_request(x, "identity_fp32", "INPUT0", id=f"r{i}"), timeout=30) for i, x in enumerate(xs)]
            return await asyncio.gather(*calls)

    for i, answer in enumerate(asyncio.run(send_all())):
        resp = pb.ModelInferResponse.FromString(answer)
        assert resp.id == f"r{i}"
        assert np.array_equal(np.frombuffer(resp.raw_output_contents[0], np.float32), xs[i].ravel())


def _take_calls(front, count: int) -> list:
    taken: list = []
    deadline = time.monotonic() + 10
    while len(taken) < count and time.monotonic() < deadline:
        select.select([front.fileno()], [], [], 0.5)
        calls, _, _ = front.take()
        taken += calls
    assert len(taken) == count
    return taken


def test_staged_answers_leave_together_at_the_flush():
    # the event loop stages a loop iteration's unary answers and flushes them at one wake-up of the
    # responder thread (native_front.NativeFront._answer): nothing leaves before the flush, each call gets
    # its own answer after it, and an answered call cannot be staged again
    front = native_front._native_front.Front("127.0.0.1:0", 1 << 20)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{front.port()}") as channel:
            method = channel.unary_unary("/test.Echo/Say")
            futures = [method.future(b"question %d" % i, timeout=20) for i in range(3)]
            taken = _take_calls(front, 3)
            assert [front.stage(call_id, b"answer to " + bytes(request)) for call_id, _, request, _, _ in taken] == [
                True,
                False,
                False,
            ]
            time.sleep(0.3)
            assert not any(f.done() for f in futures)
            front.flush()
            assert [f.result(timeout=10) for f in futures] == [b"answer to question %d" % i for i in range(3)]
            assert front.stage(taken[0][0], b"again") is False  # finished: nothing staged
            front.flush()  # nothing to send: a no-op
            follow = method.future(b"next", timeout=20)
            ((call_id, _, _, _, _),) = _take_calls(front, 1)
            assert front.stage(call_id, b"answer to next") is True  # the first since the last flush
            front.shutdown(5.0)  # sends what is still staged before it waits for the calls
            assert follow.result(timeout=10) == b"answer to next"
    finally:
        front.shutdown(0.0)
