"""A bare grpc.aio server answering the Open Inference Protocol's ModelInfer: the Python gRPC ceiling.

It does no inference: ``ModelInfer`` returns a fixed, pre-serialised response (``--response-file``,
normally the model's real response, so the bytes on the wire match the real server's) or, without
one, the request bytes themselves. Handlers take and return bytes (no protobuf parsing), on uvloop
like the sidecar, so what it costs per request is the transport alone. ``--parse`` parses each request
into a ModelInferRequest and serialises the response from a message, adding protobuf's cost.

ServerLive, ServerReady and ModelReady answer ``true`` so the usual readiness checks work.

    python -m bench.echo_server --port 8001 [--response-file resp.bin] [--parse]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

SERVICE = "inference.GRPCInferenceService"
_TRUE = b"\x08\x01"  # {bool field 1 = true}: ServerLive/ServerReady/ModelReady responses


def _handlers(response: bytes | None, parse: bool) -> grpc.GenericRpcHandler:
    if parse:
        from sidecar.protocol._generated import grpc_service_pb2 as pb

        template = pb.ModelInferResponse.FromString(response) if response is not None else None

        async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            msg = pb.ModelInferRequest.FromString(request)
            if template is None:
                out = pb.ModelInferResponse(model_name=msg.model_name, id=msg.id)
                out.raw_output_contents.extend(msg.raw_input_contents)
                return out.SerializeToString()
            out = pb.ModelInferResponse()
            out.CopyFrom(template)
            out.id = msg.id
            return out.SerializeToString()

    elif response is not None:
        fixed = response

        async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return fixed

    else:

        async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return request

    async def true(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return _TRUE

    def unary(fn) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=None, response_serializer=None)

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ModelInfer": unary(infer),
            "ServerLive": unary(true),
            "ServerReady": unary(true),
            "ModelReady": unary(true),
        },
    )


async def serve(port: int, host: str, response: bytes | None, parse: bool) -> None:
    options = [
        ("grpc.max_receive_message_length", 256 * 1024 * 1024),
        ("grpc.max_send_message_length", 256 * 1024 * 1024),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((_handlers(response, parse),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"echo server listening on {host}:{bound}", flush=True)
    await stop.wait()
    await server.stop(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo_server", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--response-file", help="serialised ModelInferResponse to return (default: echo)")
    parser.add_argument("--parse", action="store_true", help="parse requests and build responses with protobuf")
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's default event loop")
    args = parser.parse_args(argv)
    response = Path(args.response_file).read_bytes() if args.response_file else None
    coro = serve(args.port, args.host, response, args.parse)
    if args.no_uvloop:
        asyncio.run(coro)
    else:
        import uvloop

        uvloop.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
