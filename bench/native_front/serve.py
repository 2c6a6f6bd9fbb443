"""The sidecar behind the prototype native front end (``front.cc``), for ``bench/native_front/compare.py``.

    python bench/native_front/serve.py --model-repository REPO --port PORT

Starts the sidecar as ``sidecar serve`` does (its own grpc.aio port on a free port), then the C++ front
on ``PORT``: calls arrive on gRPC's C++ threads, and the event loop takes every queued call at one
wake-up and answers each through the handler the sidecar registers on its grpc.aio port for that
method (the inference service with its telemetry wrapper, health), with the call's metadata (in the
context, and in ``CALL_METADATA`` as the metadata tap keeps it) and deadline; a call the client
cancels has its task cancelled. Streams (``ModelStreamInfer``, health ``Watch``, reflection) read
their later messages as they come and write their answers in order. A prototype for the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import inspect
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "build"))

import _native_front  # built by bench/native_front/build.sh

from sidecar.cli import install_event_loop_policy
from sidecar.config import SidecarConfig
from sidecar.protocol.inference_servicer import SERVICE as INFERENCE_SERVICE
from sidecar.protocol.reflection import HEALTH_SERVICE, enable_reflection
from sidecar.protocol.registration import CALL_METADATA

set_call_metadata = CALL_METADATA.set
_Details = collections.namedtuple("_Details", "method invocation_metadata")


class _Aborted(Exception):
    def __init__(self, code: int, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _Context:
    """What the servicer and its wrapper ask of a ``grpc.aio.ServicerContext``, for a native call
    (``write``: a stream's answers, for handlers that write them rather than yield them)."""

    __slots__ = ("_code", "_deadline", "_details", "_metadata", "_write")

    def __init__(self, deadline_s: float, metadata: tuple, write=None) -> None:
        self._deadline = deadline_s
        self._metadata = metadata
        self._write = write
        self._code = None
        self._details = ""

    async def write(self, message) -> None:
        self._write(message)

    def invocation_metadata(self):
        return self._metadata

    def time_remaining(self):
        return None if self._deadline < 0 else max(self._deadline - time.time(), 0.0)

    async def abort(self, code, details=""):
        self._code, self._details = code, details
        raise _Aborted(code.value[0], details)

    def code(self):
        return self._code

    def details(self):
        return self._details


class _Registrar:
    def __init__(self) -> None:
        self.handlers: list = []

    def add_generic_rpc_handlers(self, handlers):
        self.handlers.extend(handlers)

    def add_registered_method_handlers(self, *args):
        pass


async def main(args: argparse.Namespace) -> None:
    from sidecar.app import Sidecar

    config = SidecarConfig.load(
        None, overrides={"repository.path": args.model_repository, "server.grpc_port": 0, "server.control_port": -1}
    )
    app = Sidecar(config)
    await app.start()
    registrar = _Registrar()
    app.register_inference(registrar)
    if config.server.reflection:
        enable_reflection(registrar, (INFERENCE_SERVICE, HEALTH_SERVICE))
    handlers: dict[str, object] = {}

    def handler(method: str, metadata: tuple) -> object:
        found = handlers.get(method)
        if found is None:
            for generic in registrar.handlers:
                found = generic.service(_Details(method, metadata))
                if found is not None:
                    break
            handlers[method] = found = found or False
        return found

    front = _native_front.Front(args.port)
    loop = asyncio.get_running_loop()

    async def answer(call_id: int, method: str, request: bytes, deadline_s: float, metadata: tuple) -> None:
        found = handler(method, metadata)
        if not found:
            front.fail(call_id, 12, f"method {method} is not served here")  # UNIMPLEMENTED
            return
        set_call_metadata(metadata)  # as registration.MetadataTap keeps it for a grpc.aio call
        if found.request_streaming or found.response_streaming:
            await stream(found, call_id, request, deadline_s, metadata)
            return
        try:
            if found.request_deserializer is not None:
                request = found.request_deserializer(request)
            response = await found.unary_unary(request, _Context(deadline_s, metadata))
            if found.response_serializer is not None:
                response = found.response_serializer(response)
        except _Aborted as exc:
            front.fail(call_id, exc.code, exc.details)
        except asyncio.CancelledError:
            front.fail(call_id, 1, "cancelled")  # the client cancelled it: gRPC has told it already
        except Exception as exc:
            front.fail(call_id, 13, f"internal error: {type(exc).__name__}: {exc}")
        else:
            front.respond(call_id, response)

    inboxes: dict[int, asyncio.Queue] = {}  # a request stream's later messages (None: its end)

    async def stream(found, call_id: int, first: bytes, deadline_s: float, metadata: tuple) -> None:
        decode = found.request_deserializer or (lambda b: b)
        encode = found.response_serializer or (lambda m: m)
        if found.request_streaming:
            inbox = inboxes[call_id] = asyncio.Queue()
            front.stream(call_id)

            async def requests():
                message = first
                while message is not None:
                    yield decode(message)
                    message = await inbox.get()

            arg = requests()
        else:
            arg = decode(first)
        context = _Context(deadline_s, metadata, lambda m: front.write(call_id, encode(m)))
        try:
            if not found.response_streaming:
                response = await found.stream_unary(arg, context)
                front.respond(call_id, encode(response))
                return
            method = found.stream_stream if found.request_streaming else found.unary_stream
            if not (inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method)):
                await run_sync_stream(method, call_id, first, found.request_streaming, decode, encode, context)
                front.end(call_id, 0, "")
                return
            answers = method(arg, context)
            if inspect.isasyncgen(answers):
                async for answer in answers:
                    front.write(call_id, encode(answer))
            else:  # a coroutine that writes its answers (context.write)
                await answers
            front.end(call_id, 0, "")
        except _Aborted as exc:
            front.end(call_id, exc.code, exc.details)
        except asyncio.CancelledError:
            front.end(call_id, 1, "cancelled")
        except Exception as exc:
            front.end(call_id, 13, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            inboxes.pop(call_id, None)

    async def run_sync_stream(method, call_id, first, streaming, decode, encode, context) -> None:
        """A synchronous stream handler (reflection's), on a pool thread, as grpc.aio runs one."""
        inbox = inboxes.get(call_id)

        def requests():
            message = first
            while message is not None:
                yield decode(message)
                if not streaming:
                    return
                message = asyncio.run_coroutine_threadsafe(inbox.get(), loop).result()

        def run() -> None:
            for answer in method(requests() if streaming else decode(first), context):
                front.write(call_id, encode(answer))

        await loop.run_in_executor(None, run)

    tasks: dict[int, asyncio.Task] = {}

    def drain() -> None:
        calls, cancelled, messages = front.take()
        for call_id, body in messages:
            inbox = inboxes.get(call_id)
            if inbox is not None:
                inbox.put_nowait(body)
        for call in calls:
            task = loop.create_task(answer(*call))
            tasks[call[0]] = task
            task.add_done_callback(lambda _t, call_id=call[0]: tasks.pop(call_id, None))
        for call_id in cancelled:
            task = tasks.get(call_id)
            if task is not None:
                task.cancel()

    loop.add_reader(front.fileno(), drain)
    print("ready", flush=True)
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    loop.remove_reader(front.fileno())
    front.shutdown()
    await app.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--model-repository", required=True)
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    from sidecar import grpc_io

    grpc_io.choose(SidecarConfig.load(None).server.grpc_io, a.model_repository)  # as `sidecar serve`, before gRPC
    install_event_loop_policy()
    asyncio.run(main(a))
