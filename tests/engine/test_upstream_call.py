"""engine.upstream_call against a real grpc.aio server: the request leaves when ``start`` returns, the
answer's bytes come back, statuses come back as grpc.aio's, and cancelling works before and while the
call is awaited. The fallback to grpc.aio's public call behaves the same."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from sidecar.engine.upstream_call import PublicCall, RawUnary, SentCall

METHOD = "/test.Echo/Call"


class Backend:
    """A generic handler: echoes b"ok:" + request; b"fail" aborts; b"slow" waits until cancelled."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.arrived = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.metadata: list[tuple] = []

    async def call(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.received.append(request)
        self.metadata.append(tuple(context.invocation_metadata() or ()))
        self.arrived.set()
        if request == b"fail":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too busy")
        if request == b"slow":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return b"ok:" + request


async def _serve(backend: Backend) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(backend.call)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", {"Call": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


class Public:
    """grpc.aio's multicallable without the attributes RawUnary reads (another grpc release)."""

    def __init__(self, multicallable) -> None:
        self._inner = multicallable

    def __call__(self, *args, **kwargs):
        return self._inner(*args, **kwargs)


@pytest.fixture(params=["lean", "public"])
def kind(request) -> str:
    return request.param


def _raw(channel: grpc.aio.Channel, kind: str, metadata=None) -> RawUnary:
    multicallable = channel.unary_unary(METHOD, None, None, _registered_method=True)
    raw = RawUnary(multicallable if kind == "lean" else Public(multicallable), metadata)
    assert raw.lean is (kind == "lean")
    return raw


def test_answers_statuses_and_metadata(kind: str) -> None:
    async def main() -> None:
        backend = Backend()
        server, port = await _serve(backend)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            raw = _raw(channel, kind, (("x-token", "abc"),))
            call = raw.start(b"hello", 5.0)
            assert isinstance(call, SentCall if kind == "lean" else PublicCall)
            assert call.sent is (kind == "lean")
            assert await call == b"ok:hello"
            assert ("x-token", "abc") in [(m.key, m.value) for m in backend.metadata[0]]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await raw.start(b"fail", 5.0)
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert info.value.details() == "too busy"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await raw.start(b"slow", 0.2)
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            # The channel still serves after each failure.
            assert await raw.start(b"again", 5.0) == b"ok:again"
        await server.stop(None)

    asyncio.run(main())


def test_a_lean_call_is_on_its_way_before_it_is_awaited() -> None:
    async def main() -> None:
        backend = Backend()
        server, port = await _serve(backend)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            raw = _raw(channel, "lean")
            assert await raw.start(b"warm", 5.0) == b"ok:warm"  # connected
            backend.arrived.clear()
            call = raw.start(b"early", 5.0)
            # Never awaited yet: the server gets it while this task only sleeps.
            await asyncio.wait_for(backend.arrived.wait(), 5.0)
            assert backend.received[-1] == b"early"
            assert await call == b"ok:early"
        await server.stop(None)

    asyncio.run(main())


def test_cancel_before_await_and_while_awaited(kind: str) -> None:
    async def main() -> None:
        backend = Backend()
        server, port = await _serve(backend)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            raw = _raw(channel, kind)
            # Abandoned before anyone awaits it (a request that failed its checks).
            call = raw.start(b"slow", 5.0)
            await asyncio.wait_for(backend.arrived.wait(), 5.0)
            assert call.cancel() is True
            await asyncio.wait_for(backend.cancelled.wait(), 5.0)
            with pytest.raises(asyncio.CancelledError):
                await call
            # The awaiting task cancelled (the caller went away).
            backend.arrived.clear()
            backend.cancelled.clear()
            task = asyncio.ensure_future(_await(raw.start(b"slow", 5.0)))
            await asyncio.wait_for(backend.arrived.wait(), 5.0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(backend.cancelled.wait(), 5.0)
            assert await raw.start(b"after", 5.0) == b"ok:after"
        await server.stop(None)

    asyncio.run(main())


async def _await(call) -> bytes:
    return await call


def test_an_unreachable_upstream_is_unavailable(kind: str) -> None:
    async def main() -> None:
        async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _raw(channel, kind).start(b"x", 5.0)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE

    asyncio.run(main())
