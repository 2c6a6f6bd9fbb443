"""The native front end: gRPC's C++ server on the inference port, the sidecar's handlers behind it.

grpc.aio's per-call work runs in Python on the event loop: three tasks, an ``asyncio.wait`` over its
pending request-call task, a future per batch of gRPC operations, checks on the handler, and hand-offs
between gRPC's threads and the loop's. Measured on 2 cores (README, Performance), a bare grpc.aio
server spends 400-460 us of CPU per request where gRPC's C++ server spends 80-90. With
``server.front = "native"`` (or ``"auto"`` where it is built) the C++ server (``_native_front.cc``)
takes every call on the inference port on gRPC's threads and queues it; the event loop takes all
queued calls at one wake-up and runs each through the very handlers the grpc.aio server would run
(``InferenceServicer`` behind its telemetry wrapper, health, reflection): everything from the servicer
down is the same code. A cancelled call's task is cancelled (the batcher drops it), a stream's later
messages arrive as they come and its answers leave in order, and each call's metadata reaches its
handler both in its context and in ``registration.CALL_METADATA`` (as the metadata tap keeps it).
A request of 64 KiB or more reaches its handler as a read-only memoryview of gRPC's own buffer, not a
copy (the servicer reads a relayed request from shared memory the same way): copying an image-sized
request on the event loop, GIL held, cost more than all the rest of its handling. Answers are queued,
in order, for a thread of the front's own that hands them to gRPC (whose write path would otherwise
run on the event loop: ~36 us a call on 2 cores); the unary answers of one loop iteration go to it
together, at one wake-up of that thread (one per answer cost the loop more GIL-held time than the
answer's own work).

What differs from grpc.aio, by design: a method the port does not serve is UNIMPLEMENTED with the
method's name in the message; a unary request that does not decode is INVALID_ARGUMENT naming the method
(grpc.aio answers INTERNAL, "Exception deserializing request!"); ingest workers
(``server.ingest_workers``) need grpc.aio's port sharing, so with them the sidecar serves on grpc.aio.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import time
from collections.abc import Callable
from typing import Any

import grpc

from sidecar.ingest.relay import RelayAbort, RelayContext, find_handler
from sidecar.protocol.registration import CALL_METADATA

try:
    from sidecar.protocol import _native_front
except ImportError:  # not built: no libgrpc++ where it was installed (setup.py)
    _native_front = None

log = logging.getLogger(__name__)

AVAILABLE = _native_front is not None
_set_call_metadata = CALL_METADATA.set
_CANCELLED = grpc.StatusCode.CANCELLED.value[0]
_INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
_UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED.value[0]
_UNKNOWN = grpc.StatusCode.UNKNOWN.value[0]


def _identity(value: Any) -> Any:
    return value


class NativeContext(RelayContext):
    """A native call's ``grpc.aio.ServicerContext`` stand-in; ``write`` sends a stream's next answer
    (for handlers that write their answers rather than yield them, as health's ``Watch``)."""

    __slots__ = ("_write",)

    def __init__(self, metadata: tuple, remaining_s: float | None, write: Callable[[Any], Any] | None = None) -> None:
        super().__init__(metadata, remaining_s)
        self._write = write

    async def write(self, message: Any) -> None:
        self._write(message)  # type: ignore[misc]

    def peer(self) -> str:
        return "native-front"


class NativeFront:
    """Registration target for the inference port's handlers (``add_generic_rpc_handlers``), then the
    port itself: ``start(address, max_message_bytes)`` binds it, ``stop(grace_s)`` closes it."""

    def __init__(self) -> None:
        if _native_front is None:
            raise RuntimeError("the native front end is not built (setup.py: needs libgrpc++-dev)")
        self._generic: list[Any] = []
        self._handlers: dict[str, Any] = {}
        self._front: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: dict[int, asyncio.Task] = {}
        self._inboxes: dict[int, Any] = {}  # a request stream's later messages: asyncio or thread-safe queue
        self._stopped: asyncio.Event | None = None
        self.port = 0

    # -- registration (what generated add_*_to_server functions call) ---------------------------------
    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        """Ignored: the generated code registers the same handlers as a generic handler too."""

    # -- serving -------------------------------------------------------------------------------------
    async def start(self, address: str, max_message_bytes: int) -> int:
        """Bind ``address`` ("host:port"; port 0: any) and serve; returns the port."""
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._front = _native_front.Front(address, max_message_bytes)
        self.port = self._front.port()
        self._loop.add_reader(self._front.fileno(), self._drain)
        return self.port

    async def stop(self, grace_s: float) -> None:
        """Stop taking calls; calls still running after ``grace_s`` are cancelled (and answered so)."""
        front = self._front
        if front is None or self._loop is None:
            return
        # gRPC's shutdown waits for every call to be finished, which the loop does: run it beside it.
        await asyncio.to_thread(front.shutdown, grace_s)
        self._loop.remove_reader(front.fileno())
        self._front = None
        if self._stopped is not None:
            self._stopped.set()

    async def wait_for_termination(self) -> None:
        if self._stopped is not None:
            await self._stopped.wait()

    def _drain(self) -> None:
        front = self._front
        if front is None:
            return
        calls, cancelled, messages = front.take()
        inboxes = self._inboxes
        for call_id, body in messages:
            inbox = inboxes.get(call_id)
            if inbox is not None:
                inbox.put_nowait(body)
        create_task = self._loop.create_task  # type: ignore[union-attr]
        tasks = self._tasks
        for call in calls:
            call_id = call[0]
            task = create_task(self._answer(front, *call))
            tasks[call_id] = task
            task.add_done_callback(lambda _task, call_id=call_id: tasks.pop(call_id, None))
        for call_id in cancelled:
            task = tasks.get(call_id)
            if task is not None:
                task.cancel()

    def _handler(self, method: str, metadata: tuple) -> Any:
        found = self._handlers.get(method)
        if found is None:
            self._handlers[method] = found = find_handler(self._generic, method, metadata) or False
        return found

    async def _answer(
        self, front: Any, call_id: int, method: str, request: bytes | memoryview, deadline_s: float, metadata: tuple
    ):
        found = self._handler(method, metadata)
        if not found:
            front.end(call_id, _UNIMPLEMENTED, f"method {method} is not served on this port")
            return
        _set_call_metadata(metadata)  # as registration.MetadataTap keeps it for a grpc.aio call
        remaining = None if deadline_s < 0 else max(0.0, deadline_s - time.time())
        if found.request_streaming or found.response_streaming:
            await self._stream(front, found, call_id, request, remaining, metadata)
            return
        decode = found.request_deserializer
        if decode is not None:
            try:
                request = decode(request)
            except Exception as exc:  # bad input: the client's to fix, and nothing ran
                front.end(call_id, _INVALID_ARGUMENT, f"{method}: the request is not a valid message: {exc}")
                return
        context = NativeContext(metadata, remaining)
        try:
            response = await found.unary_unary(request, context)
            encode = found.response_serializer
            if encode is not None:
                response = encode(response)
        except RelayAbort:
            front.end(call_id, context.code().value[0], context.details())
        except asyncio.CancelledError:
            front.end(call_id, _CANCELLED, "cancelled")  # the client's cancel (or the server's stop)
        except Exception as exc:
            log.exception("%s failed unexpectedly", method)
            front.end(call_id, _UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}")
        else:
            self._respond(front, call_id, response)

    def _respond(self, front: Any, call_id: int, answer: bytes) -> None:
        """A unary call's answer: sent with the others of this loop iteration, at one wake-up of the
        responder thread (the first staged schedules the flush)."""
        if front.stage(call_id, answer):
            self._loop.call_soon(front.flush)  # type: ignore[union-attr]

    async def _stream(
        self, front: Any, found: Any, call_id: int, first: bytes, remaining: float | None, metadata: tuple
    ) -> None:
        decode = found.request_deserializer or _identity
        encode = found.response_serializer or _identity
        method = None
        if found.response_streaming:
            method = found.stream_stream if found.request_streaming else found.unary_stream
        sync = method is not None and not (inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method))
        inbox: Any = None
        if found.request_streaming:
            # a synchronous handler reads its requests on a pool thread: a queue it waits on without the loop
            inbox = self._inboxes[call_id] = queue.SimpleQueue() if sync else asyncio.Queue()
            front.stream(call_id)
        context = NativeContext(metadata, remaining, lambda message: front.write(call_id, encode(message)))
        try:
            if method is None:  # stream in, one answer out
                response = await found.stream_unary(_requests(first, inbox, decode), context)
                self._respond(front, call_id, encode(response))
                return
            if sync:
                await self._sync_stream(front, method, call_id, first, inbox, decode, encode, context)
            else:
                answers = method(_requests(first, inbox, decode) if inbox is not None else decode(first), context)
                if inspect.isasyncgen(answers):
                    async for answer in answers:
                        front.write(call_id, encode(answer))
                else:  # a coroutine that writes its answers (context.write)
                    await answers
            front.end(call_id, 0, "")
        except RelayAbort:
            front.end(call_id, context.code().value[0], context.details())
        except asyncio.CancelledError:
            front.end(call_id, _CANCELLED, "cancelled")
        except Exception as exc:
            log.exception("%s failed unexpectedly", found)
            front.end(call_id, _UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}")
        finally:
            if self._inboxes.pop(call_id, None) is not None:
                inbox.put_nowait(None)  # whatever still reads the requests (a pool thread) sees their end

    async def _sync_stream(self, front, method, call_id, first, inbox, decode, encode, context) -> None:
        """A synchronous stream handler (reflection's) on a pool thread, as grpc.aio runs one; ``inbox``
        (a ``queue.SimpleQueue``) gets the later requests, and None at their end or the call's."""

        def requests():
            message = first
            while message is not None:
                yield decode(message)
                message = inbox.get()

        def run() -> None:
            for answer in method(requests() if inbox is not None else decode(first), context):
                front.write(call_id, encode(answer))

        await asyncio.get_running_loop().run_in_executor(None, run)


async def _requests(first: bytes, inbox: asyncio.Queue | None, decode: Callable[[bytes], Any]):
    """A request stream's messages as they come: the first, then the inbox's until its end (None)."""
    message: bytes | None = first
    while message is not None:
        yield decode(message)
        if inbox is None:
            return
        message = await inbox.get()
