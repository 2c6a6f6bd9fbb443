"""Ingest workers: more processes taking gRPC calls on the sidecar's port, relaying them to it.

One Python process can only ingest so many calls a second: gRPC's per-call work (HTTP/2, framing,
copying each message into a ``bytes``) runs on its one event loop. On the H100 machine one bare
grpc.aio process took at most 2,400-3,200 ResNet-50 requests (602 KB) a second, below what ONNX
Runtime runs, and two processes on one port took 5,847 (README, "GPU"). With
``server.ingest_workers`` = N the sidecar starts N worker processes (``sidecar.ingest.worker``) that
bind the same port (``SO_REUSEPORT``: the kernel spreads the clients' connections over all N + 1
processes) and pass each call they take, as the bytes that came off the wire, over one Unix socket
to this process, which runs it exactly as if it had come in itself: the same servicer, telemetry,
routing, batching, models and monitoring, all still in one place. Its answer (or its gRPC status)
goes back the same way.

What a worker serves: every unary method of the inference service, ``ModelStreamInfer`` (each
message relayed and answered by the servicer's own per-message code, answers in order), health
checking's ``Check``, and reflection.
Not ``Health/Watch`` (a watch stays on a connection the serving process took).

``IngestWorkers`` is the serving process's side: the Unix socket server that runs relayed calls,
and the workers' supervision (started after the port is bound; one that exits is started again
after a second; all are stopped first at shutdown). ``RelayContext`` is what a relayed call's
servicer sees instead of a ``grpc.aio.ServicerContext``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from sidecar.ingest import wire
from sidecar.protocol.registration import CALL_METADATA, generic_only

log = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0
STOP_TIMEOUT_S = 8.0  # a worker's own grace for the calls it holds is 5 s (worker.py)


class RelayAbort(grpc.aio.AbortError):
    """Raised by ``RelayContext.abort`` (as grpc.aio's own abort raises ``AbortError``)."""


class RelayContext:
    """The part of ``grpc.aio.ServicerContext`` the sidecar's servicers use, for a relayed call."""

    __slots__ = ("_code", "_deadline", "_details", "_metadata")

    def __init__(self, metadata: tuple, remaining_s: float | None) -> None:
        self._metadata = metadata
        self._deadline = None if remaining_s is None else time.monotonic() + remaining_s
        self._code: grpc.StatusCode | None = None
        self._details = ""

    def invocation_metadata(self) -> tuple:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        self._code, self._details = code, details
        raise RelayAbort()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def peer(self) -> str:
        return "ingest-worker"


class _Details:
    """What a generic handler's ``service()`` reads to find a method."""

    __slots__ = ("invocation_metadata", "method")

    def __init__(self, method: str, metadata: tuple = ()) -> None:
        self.method = method
        self.invocation_metadata = metadata


def find_handler(generic_handlers: Any, method: str, metadata: tuple = ()) -> Any:
    """The method handler the first of ``generic_handlers`` that serves ``method`` gives; None if none does
    (grpc.aio's lookup, for calls that reach the handlers some other way: relayed, or the native front)."""
    details = _Details(method, metadata)
    for generic in generic_handlers:
        found = generic.service(details)
        if found is not None:
            return found
    return None


class _Capture:
    """Stands in for a server: keeps the generic handlers it is given."""

    def __init__(self) -> None:
        self.handlers: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.handlers.extend(handlers)


def method_table(
    register: Callable[[Any], None], stream_message: Callable[[bytes, Any], Any]
) -> list[tuple[Any, Any, Any]]:
    """(behaviour, request deserializer, response serializer) for each of ``wire.METHODS``, from the
    handlers ``register(registrar)`` adds (the same functions the gRPC server registers), and
    ``stream_message`` for one ModelStreamInfer message (``InferenceServicer.stream_message``)."""
    capture = _Capture()
    register(generic_only(capture))
    table = []
    for method in wire.METHODS:
        if method == wire.METHODS[wire.STREAM_MESSAGE]:
            table.append((stream_message, None, None))
            continue
        found = find_handler(capture.handlers, method)
        if found is None or found.unary_unary is None:
            raise ValueError(f"no unary handler for {method}")
        table.append((found.unary_unary, found.request_deserializer, found.response_serializer))
    return table


class _Connection(asyncio.Protocol):
    """One worker's connection: runs each CALL in a task of its own, answers with a REPLY."""

    def __init__(self, owner: IngestWorkers) -> None:
        self._owner = owner
        self._reader = wire.FrameReader(owner.max_body)
        self._transport: asyncio.Transport | None = None
        self._calls: dict[int, asyncio.Task] = {}
        self._ring: wire.SharedSlots | None = None  # the worker's shared memory (after its HELLO)
        self._ring_path = ""
        self._loop = asyncio.get_running_loop()
        self._frees: collections.deque[int] = collections.deque()  # payloads let go of, to tell the worker
        self._flush_asked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._reader.feed(data)
            for kind, call_id, body in frames:
                if kind == wire.CALL or kind == wire.CALL_SHARED:
                    ring = self._ring if kind == wire.CALL_SHARED else None
                    if kind == wire.CALL_SHARED and ring is None:
                        raise wire.WireError("a CALL_SHARED frame before the worker's HELLO")
                    task = asyncio.ensure_future(self._run(body, ring))
                    self._calls[call_id] = task
                    task.add_done_callback(functools.partial(self._done, call_id))
                elif kind == wire.CANCEL:
                    task = self._calls.get(call_id)
                    if task is not None:
                        task.cancel()
                elif kind == wire.HELLO and body:
                    self._ring_path = body.decode()
                    self._ring = wire.SharedSlots(self._ring_path, self._freed)
        except (wire.WireError, OSError, ValueError) as exc:
            log.error("ingest relay: %s; closing the worker's connection", exc)
            if self._transport is not None:
                self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        for task in list(self._calls.values()):
            task.cancel()
        self._calls.clear()
        self._transport = None
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._ring_path:  # a worker killed outright leaves its ring behind
            with contextlib.suppress(OSError):
                os.unlink(self._ring_path)

    def _freed(self, offset: int) -> None:
        """A shared payload nothing refers to any more (called from any thread): tell the worker, in
        one FREE frame for all that went in the same loop turn."""
        self._frees.append(offset)
        if not self._flush_asked:
            self._flush_asked = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is going too
                self._loop.call_soon_threadsafe(self._flush_frees)

    def _flush_frees(self) -> None:
        self._flush_asked = False
        frees = self._frees
        offsets = [frees.popleft() for _ in range(len(frees))]
        transport = self._transport
        if offsets and transport is not None and not transport.is_closing():
            transport.write(wire.free_frame(offsets))

    async def _run(self, body: bytes, ring: wire.SharedSlots | None) -> tuple[int, str, Any]:
        """(status code, details, response bytes) of one relayed call. A shared payload is read in
        place (a view of the worker's ring, given back when nothing refers to it any more)."""
        try:
            method, remaining, metadata, request = wire.parse_call(body, ring)
        except wire.WireError as exc:
            return grpc.StatusCode.INTERNAL.value[0], f"ingest relay: {exc}", b""
        behaviour, deserialize, serialize = self._owner.table[method]
        context = RelayContext(metadata, remaining)
        CALL_METADATA.set(metadata)  # this call's, in this call's task (sidecar.protocol.registration)
        self._owner.relayed += 1
        if ring is not None:
            self._owner.shared += 1
        try:
            response = await behaviour(deserialize(request) if deserialize else request, context)
        except grpc.aio.AbortError:
            status = context.code() or grpc.StatusCode.UNKNOWN
            return status.value[0], context.details() or "", b""
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("ingest relay: a relayed call failed unexpectedly")
            return grpc.StatusCode.INTERNAL.value[0], f"internal error: {type(exc).__name__}: {exc}", b""
        status = context.code()
        if status is not None and status is not grpc.StatusCode.OK:
            return status.value[0], context.details() or "", b""
        return 0, "", serialize(response) if serialize else response

    def _done(self, call_id: int, task: asyncio.Task) -> None:
        """Every CALL gets its REPLY, also one cancelled before it started (the worker then frees the
        call's place in its ring)."""
        self._calls.pop(call_id, None)
        if task.cancelled():
            code, details, payload = grpc.StatusCode.CANCELLED.value[0], "the call was cancelled", b""
        else:
            code, details, payload = task.result()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.writelines(wire.reply_frame(call_id, code, details, payload))


class IngestWorkers:
    """The serving process's side of ``server.ingest_workers``: the relay socket and the workers."""

    def __init__(
        self,
        count: int,
        register: Callable[[Any], None],
        stream_message: Callable[[bytes, Any], Any],
        host: str,
        max_message_bytes: int,
        socket_path: str = "",
        shared_memory_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.count = count
        self.table = method_table(register, stream_message)
        self.max_body = max_message_bytes + 64 * 1024  # the message plus the frame's own fields
        self._host = host
        self._max_message_bytes = max_message_bytes
        self._shared_memory_bytes = shared_memory_bytes
        self._dir = "" if socket_path else tempfile.mkdtemp(prefix="sidecar-ingest-")
        self.socket_path = socket_path or str(Path(self._dir) / "relay.sock")
        self._server: asyncio.AbstractServer | None = None
        self._procs: list[subprocess.Popen | None] = [None] * count
        self._watch: asyncio.Task | None = None
        self._stopping = False
        self.draining = False  # set by the sidecar's drain: workers that exit are not started again
        self.relayed = 0  # calls relayed so far (all workers)
        self.shared = 0  # ... of which the request came through a worker's shared memory
        self.started = 0  # worker processes started so far (restarts included)
        self.port = 0

    async def start(self, port: int) -> None:
        """Listen on the relay socket, then start the workers on ``port`` (already bound here)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Connection(self), self.socket_path)
        self.port = port
        for i in range(self.count):
            self._procs[i] = self._spawn(i)
        self._watch = asyncio.ensure_future(self._supervise())
        log.info(
            "%d ingest worker(s) take calls on port %d beside this process, relayed over %s",
            self.count,
            port,
            self.socket_path,
        )

    def argv(self, index: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "sidecar.ingest.worker",
            "--socket",
            self.socket_path,
            "--host",
            self._host,
            "--port",
            str(self.port),
            "--max-message-bytes",
            str(self._max_message_bytes),
            "--name",
            f"ingest-{index}",
            "--log-level",
            logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            "--shared-memory-bytes",
            str(self._shared_memory_bytes),
        ]

    def _spawn(self, index: int) -> subprocess.Popen:
        self.started += 1
        return subprocess.Popen(self.argv(index), stdin=subprocess.DEVNULL)

    async def _supervise(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.5)
            for i, proc in enumerate(self._procs):
                if self._stopping or proc is None or proc.poll() is None:
                    continue
                if self.draining:  # shutting down: a worker that stopped (SIGTERM to the group) stays stopped
                    log.info("ingest worker %d exited with code %s while draining", i, proc.returncode)
                    self._procs[i] = None
                    continue
                log.warning("ingest worker %d exited with code %s; starting it again", i, proc.returncode)
                await asyncio.sleep(RESTART_DELAY_S)
                if not self._stopping and not self.draining:
                    self._procs[i] = self._spawn(i)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.poll() is None]

    async def stop(self) -> None:
        """Stop the workers (they finish the calls they hold), then close the relay socket."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        procs = [p for p in self._procs if p is not None and p.poll() is None]
        for p in procs:
            p.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for p in procs:
            while p.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if p.poll() is None:
                p.kill()
                p.wait()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        log.info("ingest workers stopped; they relayed %d call(s), %d through shared memory", self.relayed, self.shared)
        if self._dir:
            with contextlib.suppress(OSError):
                os.rmdir(self._dir)
