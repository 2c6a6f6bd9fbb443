"""Unary calls to an upstream, bytes in and bytes out, sent at once on the call object grpc.aio itself uses.

grpc.aio's public ``UnaryUnaryCall`` runs its Cython call (``cygrpc._AioCall.unary_unary``) in a task
of its own: the request goes out only when that task first runs, on a later turn of the event loop,
and the answer reaches the caller one more turn after it arrived (the task finishes, then wakes the
caller). For a proxy that is its request path: a request forwarded as it came is sent before the
sidecar checks it, so that the checks run while the upstream works, and with grpc.aio's call that
needed a turn of the loop given up on purpose (``asyncio.sleep(0)``) plus the task's own turns.

``RawUnary.start`` makes the same Cython call (same channel, method, deadline, metadata; the same six
operations in one batch) and runs its coroutine's first step at once: the batch is handed to gRPC's
core, which sends it, before ``start`` returns. Awaiting the returned ``SentCall`` resumes that
coroutine in the awaiting task (no task of its own). Measured at concurrency 1 in
``bench/bench_routing.py`` (README, Routing).

It reads three attributes of grpc.aio's multicallable (``_channel``, ``_method``,
``_registered_call_handle``); where they are missing (another grpc release), it makes grpc.aio's
public call instead (``sent`` False: the caller then gives the loop a turn to send it). Outcomes are
grpc.aio's: a non-OK call raises ``grpc.aio.AioRpcError`` with the upstream's code, details and
trailing metadata; a call cancelled here (``cancel()``, or the awaiting task cancelled) is cancelled
in gRPC and raises ``asyncio.CancelledError``. One difference: ``channel.close(grace)`` does not wait
for these calls (grpc.aio only tracks its own call objects); closing the channel cancels them.

A traced call (``TracedCall``) carries a CLIENT span whose W3C trace context goes with the call
(``start``'s ``extra_metadata``), so the upstream's own spans join the caller's trace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import Any

import grpc
from opentelemetry.trace import StatusCode

_CANCELLED = "Locally cancelled by application!"  # grpc.aio's words for a call its caller cancelled
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class RawUnary:
    """One unary method of one channel (``channel.unary_unary(method)`` with identity serialisers)."""

    __slots__ = ("_channel", "_handle", "_metadata", "_method", "_public")

    def __init__(self, multicallable: Any, metadata: tuple[tuple[str, str], ...] | None = None) -> None:
        self._public = multicallable
        self._metadata = tuple((str(k), str(v)) for k, v in (metadata or ()))
        channel = getattr(multicallable, "_channel", None)
        method = getattr(multicallable, "_method", None)
        handle = getattr(multicallable, "_registered_call_handle", 0)
        usable = callable(getattr(channel, "call", None)) and isinstance(method, bytes) and isinstance(handle, int)
        self._channel = channel if usable else None
        self._method = method
        self._handle = handle

    @property
    def lean(self) -> bool:
        """Whether calls go out from ``start`` itself (False: grpc.aio's public call, sent by its task)."""
        return self._channel is not None

    def start(
        self, payload: bytes, timeout_s: float, extra_metadata: tuple[tuple[str, str], ...] = ()
    ) -> SentCall | PublicCall:
        """``payload`` on its way with ``timeout_s`` to go; await the result for the answer's bytes.
        ``extra_metadata``: sent on this call after the channel's own (a trace context)."""
        metadata = self._metadata + extra_metadata if extra_metadata else self._metadata
        if self._channel is None:
            return PublicCall(self._public(payload, timeout=timeout_s, metadata=metadata or None))
        call = self._channel.call(self._method, time.time() + timeout_s, None, None, self._handle)
        return SentCall(call, call.unary_unary(payload, metadata, None))


class SentCall:
    """A call whose request has been handed to gRPC: awaitable once (the answer's bytes), ``cancel()``-able."""

    __slots__ = ("_call", "_coro", "_pending", "_result")
    sent = True

    def __init__(self, call: Any, coro: Any) -> None:
        self._call = call
        self._coro = coro
        self._result: Any = None
        try:
            self._pending = coro.send(None)  # up to the batch's future: the batch is started
        except StopIteration as stop:  # (not seen: the answer cannot be there yet)
            self._pending, self._result = None, stop.value
        except BaseException:
            self._pending = None
            raise

    def __await__(self) -> Generator[Any, None, bytes]:
        coro, pending, result = self._coro, self._pending, self._result
        self._pending = None
        call = self._call
        try:
            while pending is not None:  # what ``yield from coro`` would do, from its second step on
                try:
                    value = yield pending
                except GeneratorExit:
                    raise
                except BaseException as exc:  # thrown in by the awaiting task (its cancellation)
                    try:
                        pending = coro.throw(exc)
                    except StopIteration as stop:
                        pending, result = None, stop.value
                else:
                    try:
                        pending = coro.send(value)
                    except StopIteration as stop:
                        pending, result = None, stop.value
        except BaseException:
            if not call.done():
                call.cancel(_CANCELLED)
            raise
        if call.is_ok():
            return result
        if call.is_locally_cancelled():
            raise asyncio.CancelledError
        return (yield from _raise_status(call).__await__())

    def cancel(self) -> bool:
        """Abandon the call (never awaited): cancelled in gRPC; its batch is let finish as it completes."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.add_done_callback(self._drain)
        if self._call.done():
            return False
        self._call.cancel(_CANCELLED)
        return True

    def _drain(self, _: Any) -> None:
        """Run the abandoned call's coroutine to its end (gRPC's batch bookkeeping), whatever it says."""
        try:
            pending = self._coro.send(None)
        except BaseException:  # StopIteration, or the batch's failure: nobody is waiting for it
            return
        pending.add_done_callback(self._drain)


class PublicCall:
    """grpc.aio's own call (``RawUnary`` without its Cython call): sent by its task on a later turn."""

    __slots__ = ("_call",)
    sent = False

    def __init__(self, call: Any) -> None:
        self._call = call

    def __await__(self) -> Generator[Any, None, bytes]:
        return self._call.__await__()

    def cancel(self) -> bool:
        return self._call.cancel()


class TracedCall:
    """A ``SentCall`` or ``PublicCall`` with its CLIENT span (``sidecar.engine.upstream``), ended with the
    call's outcome: ``rpc.status_code``, and for any code but OK the ERROR status and ``error.type``
    (OpenTelemetry's gRPC conventions for client spans). A call abandoned with ``cancel()`` ends CANCELLED."""

    __slots__ = ("_call", "_span")

    def __init__(self, call: SentCall | PublicCall, span: Any) -> None:
        self._call = call
        self._span = span

    @property
    def sent(self) -> bool:
        return self._call.sent

    def __await__(self) -> Generator[Any, None, bytes]:
        try:
            result = yield from self._call.__await__()
        except grpc.aio.AioRpcError as exc:
            self._end(exc.code().name, exc.details() or "")
            raise
        except asyncio.CancelledError:
            self._end("CANCELLED", "")
            raise
        except BaseException as exc:
            self._end("UNKNOWN", f"{type(exc).__name__}: {exc}")
            raise
        self._end("OK", "")
        return result

    def cancel(self) -> bool:
        cancelled = self._call.cancel()
        self._end("CANCELLED", "")
        return cancelled

    def _end(self, code: str, details: str) -> None:
        span = self._span
        if not span.is_recording():
            return
        span.set_attribute("rpc.status_code", code)
        if code != "OK":
            span.set_attribute("error.type", code)
            span.set_status(StatusCode.ERROR, details or code)
        span.end()


async def _raise_status(call: Any) -> bytes:
    status = await call.status()  # already there: the call is done
    raise grpc.aio.AioRpcError(
        _CODES.get(status.code(), grpc.StatusCode.UNKNOWN),
        grpc.aio.Metadata(),
        grpc.aio.Metadata.from_tuple(status.trailing_metadata() or ()),
        details=status.details(),
        debug_error_string=status.debug_error_string(),
    )
