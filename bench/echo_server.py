"""A bare grpc.aio server answering the Open Inference Protocol's ModelInfer: the Python gRPC ceiling.

It does no inference: ``ModelInfer`` returns a fixed, pre-serialised response (``--response-file``,
normally the model's real response, so the bytes on the wire match the real server's) or, without
one, the request bytes themselves. Handlers take and return bytes (no protobuf parsing), on uvloop
like the sidecar, so what it costs per request is the transport alone. ``--parse`` parses each request
into a ModelInferRequest and serialises the response from a message, adding protobuf's cost.

``--batch-model MODEL.onnx`` makes it the floor of *batching* on grpc.aio instead: the least a Python
server can do to batch (parse; queue one future per request; close a batch at ``--max-batch-size``
rows or ``--max-queue-delay-ms`` after its first request; one ONNX Runtime run per batch on one pool
thread; split the output rows; serialise each response). No validation, deadlines, errors, statistics
or telemetry: what is left of the sidecar's cost above this is the price of those.

ServerLive, ServerReady and ModelReady answer ``true`` so the usual readiness checks work.

    python -m bench.echo_server --port 8001 [--response-file resp.bin] [--parse]
    python -m bench.echo_server --port 8001 --batch-model model.onnx [--max-batch-size 64 --max-queue-delay-ms 1]

``--reuse-port`` lets several of them share one port (``SO_REUSEPORT``; bench/gpu/ingest_scaling.py).
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

    return _service(infer)


def _batching_handlers(model: str, max_batch: int, delay_s: float, intra_op_threads: int) -> grpc.GenericRpcHandler:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import onnxruntime as ort

    from sidecar.protocol._generated import grpc_service_pb2 as pb
    from sidecar.types import DATATYPE_TO_DTYPE, datatype_of

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]
    pool = ThreadPoolExecutor(1)
    pending: list[tuple[asyncio.Future, np.ndarray]] = []
    armed: list[asyncio.TimerHandle] = []
    running: set[asyncio.Task] = set()

    async def run(batch: list[tuple[asyncio.Future, np.ndarray]]) -> None:
        x = np.concatenate([b[1] for b in batch])
        outs = await asyncio.get_running_loop().run_in_executor(pool, session.run, output_names, {input_name: x})
        for i, (future, _) in enumerate(batch):
            future.set_result([o[i : i + 1] for o in outs])

    def close_batch() -> None:
        armed.clear()
        loop = asyncio.get_running_loop()
        while pending:
            batch = pending[:max_batch]
            del pending[:max_batch]
            task = loop.create_task(run(batch))
            running.add(task)
            task.add_done_callback(running.discard)

    async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        msg = pb.ModelInferRequest.FromString(request)
        tensor = msg.inputs[0]
        x = np.frombuffer(msg.raw_input_contents[0], dtype=DATATYPE_TO_DTYPE[tensor.datatype]).reshape(tensor.shape)
        future = asyncio.get_running_loop().create_future()
        pending.append((future, x))
        if len(pending) >= max_batch:
            if armed:
                armed.pop().cancel()
            close_batch()
        elif not armed:
            armed.append(asyncio.get_running_loop().call_later(delay_s, close_batch))
        outs = await future
        out = pb.ModelInferResponse(model_name=msg.model_name, model_version="1", id=msg.id)
        for name, array in zip(output_names, outs, strict=True):
            out.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
            out.raw_output_contents.append(array.tobytes())
        return out.SerializeToString()

    return _service(infer)


def _service(infer) -> grpc.GenericRpcHandler:
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


async def serve(port: int, host: str, handlers: grpc.GenericRpcHandler, reuse_port: bool = False) -> None:
    options = [
        ("grpc.max_receive_message_length", 256 * 1024 * 1024),
        ("grpc.max_send_message_length", 256 * 1024 * 1024),
        ("grpc.so_reuseport", int(reuse_port)),  # off unless asked: a port clash must fail, not share
    ]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((handlers,))
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
    parser.add_argument("--batch-model", help="ONNX model: batch requests into it (the batching floor)")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-queue-delay-ms", type=float, default=1.0)
    parser.add_argument("--intra-op-threads", type=int, default=1)
    parser.add_argument("--reuse-port", action="store_true", help="SO_REUSEPORT: share the port with others")
    args = parser.parse_args(argv)
    if args.batch_model:
        handlers = _batching_handlers(
            args.batch_model, args.max_batch_size, args.max_queue_delay_ms / 1e3, args.intra_op_threads
        )
    else:
        response = Path(args.response_file).read_bytes() if args.response_file else None
        handlers = _handlers(response, args.parse)
    coro = serve(args.port, args.host, handlers, args.reuse_port)
    if args.no_uvloop:
        asyncio.run(coro)
    else:
        import uvloop

        uvloop.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
