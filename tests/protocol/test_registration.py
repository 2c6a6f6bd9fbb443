"""Servicers registered through ``generic_only`` are served by their generic handler alone."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sidecar.protocol._generated import grpc_service_pb2 as pb
from sidecar.protocol._generated import grpc_service_pb2_grpc as pb_grpc
from sidecar.protocol.inference_servicer import SERVICE
from sidecar.protocol.inference_servicer import add_to_server as add_inference
from sidecar.protocol.registration import CALL_METADATA, call_metadata, generic_only


class _Live(pb_grpc.GRPCInferenceServiceServicer):
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)


class _Registrations:
    """The registration side of a server, recording what it is given."""

    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler] = []
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers):
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service, handlers):
        self.registered.append(service)


def test_generated_registration_gives_generic_handlers_only():
    seen = _Registrations()
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), generic_only(seen))
    add_inference(_Live(), generic_only(seen))
    assert len(seen.generic) == 2  # health and inference, one generic handler each
    # grpc.aio would keep a pending task per registered method and wait on all of them per call.
    assert seen.registered == []


async def test_a_server_registered_this_way_serves_every_method():
    server = grpc.aio.server()
    registrar = generic_only(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registrar)
    add_inference(_Live(), registrar)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            live = await pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=5)
            try:
                await pb_grpc.GRPCInferenceServiceStub(channel).ModelReady(pb.ModelReadyRequest(name="m"), timeout=5)
            except grpc.aio.AioRpcError as exc:
                unimplemented = exc.code()
    finally:
        await server.stop(None)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    assert live.live is True
    assert unimplemented is grpc.StatusCode.UNIMPLEMENTED  # the servicer's default, reached by name
    assert SERVICE == "inference.GRPCInferenceService"


class _Recorder(pb_grpc.GRPCInferenceServiceServicer):
    """Records, per call, what the tap kept and what the call's context says."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, dict]] = []

    async def ServerLive(self, request, context):
        await asyncio.sleep(0.01)  # the two calls overlap
        tapped = CALL_METADATA.get()
        self.seen.append((None if tapped is None else dict(tapped), dict(context.invocation_metadata())))
        return pb.ServerLiveResponse(live=call_metadata(context) == context.invocation_metadata())


async def _two_calls(tap: bool) -> tuple[list, list]:
    server = grpc.aio.server()
    recorder = _Recorder()
    add_inference(recorder, generic_only(server, tap_metadata=tap))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            answers = await asyncio.gather(
                *(stub.ServerLive(pb.ServerLiveRequest(), metadata=(("x-call", str(i)),), timeout=5) for i in range(2))
            )
    finally:
        await server.stop(None)
    return recorder.seen, [a.live for a in answers]


async def test_a_tapped_server_hands_each_call_its_own_metadata():
    seen, same = await _two_calls(tap=True)
    assert same == [True, True]  # call_metadata() gives what the context gives
    assert sorted(tapped["x-call"] for tapped, _ in seen) == ["0", "1"]
    for tapped, from_context in seen:
        assert tapped == from_context  # the lookup's tuple, this call's, in this call's task
    assert CALL_METADATA.get() is None  # nothing leaks into the caller's context


async def test_an_untapped_server_leaves_the_metadata_to_the_context():
    seen, same = await _two_calls(tap=False)
    assert same == [True, True]
    assert [tapped for tapped, _ in seen] == [None, None]
    assert sorted(ctx["x-call"] for _, ctx in seen) == ["0", "1"]
