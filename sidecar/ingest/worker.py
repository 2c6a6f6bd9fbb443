"""An ingest worker: a grpc.aio server on the sidecar's port that relays every call to the sidecar.

Started by the serving process (``sidecar.ingest.relay.IngestWorkers``), never by hand::

    python -m sidecar.ingest.worker --socket RELAY.sock --host 0.0.0.0 --port 8001 [--max-message-bytes N]

It binds the port with ``SO_REUSEPORT`` beside the serving process, connects to the relay socket, and
for each call sends the request's bytes, the caller's metadata and time remaining, and answers with
what comes back: the response's bytes or the gRPC status and message the sidecar gave. It parses
nothing but stream messages' framing. A caller that cancels is cancelled in the sidecar too. When the
relay connection closes (the sidecar stopped), calls still waiting fail UNAVAILABLE and the worker
exits; on SIGTERM it stops taking calls, finishes those it holds, and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from sidecar.ingest import wire
from sidecar.protobuf_wire import string_field
from sidecar.protocol.streams import answer_in_order

log = logging.getLogger("sidecar.ingest.worker")

_CODES = {c.value[0]: c for c in grpc.StatusCode}
SHARED_MIN_BYTES = 64 * 1024  # messages this large go through shared memory, smaller ones through the socket
RING_BYTES = 64 * 1024 * 1024  # each worker's shared memory, unless --shared-memory-bytes says otherwise
STREAM_METHOD = wire.INFERENCE + "ModelStreamInfer"


class Relay(asyncio.Protocol):
    """The connection to the serving process: calls out, replies back, matched by call id. Large
    request messages travel through ``ring`` (shared memory) when given; their space is reused once
    the serving process says (FREE) that nothing refers to them any more."""

    def __init__(self, max_body: int, ring: wire.SharedRing | None = None) -> None:
        self._reader = wire.FrameReader(max_body)
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future] = {}  # call id -> its answer
        self._ids = itertools.count(1)
        self._ring = ring
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        transport.write(wire.hello_frame(self._ring.path if self._ring is not None else ""))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._reader.feed(data)
        except wire.WireError as exc:
            log.error("relay: %s", exc)
            if self._transport is not None:
                self._transport.close()
            return
        for kind, call_id, body in frames:
            if kind == wire.FREE:  # the serving process is done with these payloads
                for offset in wire.parse_free(body):
                    self._ring.free(offset)  # type: ignore[union-attr]
                continue
            future = self._pending.pop(call_id, None) if kind == wire.REPLY else None
            if future is not None and not future.done():
                future.set_result(body)

    def connection_lost(self, exc: Exception | None) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the sidecar's serving process closed the relay"))
        self._pending.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    async def call(self, method: int, request: bytes, context: Any) -> tuple[int, str, bytes]:
        """(status code, details, response bytes) of one relayed call."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return grpc.StatusCode.UNAVAILABLE.value[0], "the sidecar's serving process is not reachable", b""
        call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        shared = None
        if self._ring is not None and len(request) >= SHARED_MIN_BYTES:
            shared = self._ring.put(request)  # None when the ring is full: the socket takes it
        self._pending[call_id] = future
        metadata = context.invocation_metadata() or ()
        transport.writelines(wire.call_frame(call_id, method, context.time_remaining(), metadata, request, shared))
        try:
            body = await future
        except asyncio.CancelledError:
            # A shared payload's space stays taken until the serving process sends FREE for it.
            self._pending.pop(call_id, None)
            if not transport.is_closing():
                transport.write(wire.cancel_frame(call_id))
            raise
        except ConnectionError as exc:
            return grpc.StatusCode.UNAVAILABLE.value[0], str(exc), b""
        return wire.parse_reply(body)


def _unary(relay: Relay, method: int):
    async def behaviour(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        code, details, response = await relay.call(method, request, context)
        if code:
            await context.abort(_CODES.get(code, grpc.StatusCode.UNKNOWN), details)
        return response

    return behaviour


def _stream(relay: Relay):
    """ModelStreamInfer: each message relayed; its answer is the serving process's, in request order."""

    async def one(message: bytes, context: grpc.aio.ServicerContext) -> bytes:
        code, details, response = await relay.call(wire.STREAM_MESSAGE, message, context)
        if code:  # the relay itself failed (the serving process is gone): the stream's error message (1)
            return string_field(1, f"[{_CODES.get(code, grpc.StatusCode.UNKNOWN).name}] {details}")
        return response

    async def behaviour(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for answer in answer_in_order(requests, lambda message: one(message, context)):
            yield answer

    return behaviour


class Handlers(grpc.GenericRpcHandler):
    """Every relayed method (``wire.METHODS``) and the stream, bytes in and out."""

    def __init__(self, relay: Relay) -> None:
        self._handlers = {m: grpc.unary_unary_rpc_method_handler(_unary(relay, i)) for i, m in enumerate(wire.METHODS)}
        self._handlers[STREAM_METHOD] = grpc.stream_stream_rpc_method_handler(_stream(relay))

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)


def _ring(name: str, size: int = RING_BYTES) -> wire.SharedRing | None:
    """This worker's shared memory under /dev/shm; None where there is none or ``size`` is 0 (messages
    then all go through the socket)."""
    if size <= 0 or not os.path.isdir("/dev/shm"):
        return None
    try:
        return wire.SharedRing(f"/dev/shm/sidecar-{name}-{os.getpid()}", size)
    except OSError as exc:
        log.warning("%s: no shared memory (%s); messages go through the relay socket", name, exc)
        return None


async def serve(
    socket_path: str, host: str, port: int, max_message_bytes: int, name: str, ring_bytes: int = RING_BYTES
) -> int:
    ring = _ring(name, ring_bytes)
    try:
        return await _serve(socket_path, host, port, max_message_bytes, name, ring)
    finally:
        if ring is not None:
            ring.close()


async def _serve(
    socket_path: str, host: str, port: int, max_message_bytes: int, name: str, ring: wire.SharedRing | None
) -> int:
    loop = asyncio.get_running_loop()
    _, relay = await loop.create_unix_connection(lambda: Relay(max_message_bytes + 64 * 1024, ring), socket_path)
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 1),  # beside the serving process and the other workers
    ]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((Handlers(relay),))
    from sidecar.protocol.reflection import HEALTH_SERVICE, enable_reflection

    enable_reflection(server, (wire.INFERENCE.strip("/"), HEALTH_SERVICE))
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        log.error("%s: cannot bind %s", name, address)
        return 1
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("%s: taking calls on %s, relaying to %s", name, address, socket_path)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait((stopped, relay.closed), return_when=asyncio.FIRST_COMPLETED)
    await server.stop(5.0 if stop.is_set() else 0.5)
    stopped.cancel()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sidecar.ingest.worker", description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True, help="the serving process's relay socket")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-message-bytes", type=int, default=64 * 1024 * 1024)
    p.add_argument("--name", default="ingest")
    p.add_argument("--shared-memory-bytes", type=int, default=RING_BYTES, help="the ring's size (0: socket only)")
    p.add_argument("--log-level", default="INFO", help="the serving process's (DEBUG, INFO, WARNING, ERROR)")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    coro = serve(args.socket, args.host, args.port, args.max_message_bytes, args.name, args.shared_memory_bytes)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


if __name__ == "__main__":
    sys.exit(main())
