"""Servicers registered through ``generic_only`` are served by their generic handler alone."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sidecar.protocol._generated import grpc_service_pb2 as pb
from sidecar.protocol._generated import grpc_service_pb2_grpc as pb_grpc
from sidecar.protocol.inference_servicer import SERVICE
from sidecar.protocol.inference_servicer import add_to_server as add_inference
from sidecar.protocol.registration import generic_only


class _Live(pb_grpc.GRPCInferenceServiceServicer):
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)


async def test_generic_only_serves_without_registered_methods():
    server = grpc.aio.server()
    registered: list[str] = []
    # On this real server, record what would become registered methods (one pending task per method,
    # all of them waited on for every call the server accepts).
    server.add_registered_method_handlers = lambda service, handlers: registered.append(service)  # type: ignore[method-assign]
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
    finally:
        await server.stop(None)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    assert live.live is True
    assert registered == []  # neither the generated health code nor ours registered methods
    assert SERVICE == "inference.GRPCInferenceService"
